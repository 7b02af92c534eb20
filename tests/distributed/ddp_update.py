"""Policy updates on a fixed global batch, run with 1 or 2 processes, under DDP or FSDP2 (sharded over
the processes), on the tiny text model or the tiny VLM; rank 0 saves the parameters.

Every case starts from the same tiny model and takes `num_iterations` plain SGD steps (lr 1, no
clipping: the parameters move by exactly the summed gradient, unlike AdamW's sign-like first step)
with `gradient_accumulation_steps` micro-batches on each rank. With two inner iterations the second
update is off-policy: the clipped ratio, the k3 KL to the reference and LLDS (whose denominator is a
count over the whole batch) all act.

    python tests/distributed/ddp_update.py OUT.pt [none|fsdp2] [text|vlm]
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 tests/distributed/ddp_update.py OUT.pt fsdp2

Extra cases repeat the off-policy update with gradient checkpointing (the blocks' forwards recomputed
in backward, inside their FSDP units), with the gradient clipped, and with LoRA.
"""
import copy
import sys

import torch
from accelerate import Accelerator
from PIL import Image

from mmrl.config import load_config
from mmrl.core import sharding
from mmrl.core.batch import RolloutBatch
from mmrl.core.checkpoint import full_state_dict
from mmrl.core.trainer import build_scheduler, end_processes, policy_update, record_behaviour_logps
from mmrl.models.tiny import build_tiny_causal_lm, build_tokenizer
from mmrl.text import CausalLMAdapter
from mmrl.vlm import VLMAdapter
from mmrl.vlm.tiny import build_processor, build_tiny_vlm

# (aggregation, num_iterations, gradient_accumulation_steps, variant): None, "checkpointing" (gradient
# checkpointing, compared with the plain update), "clipped" (the gradient clipped to norm CLIP: the
# norm of the whole gradient, over every shard) or "lora" (peft LoRA on q/v; the reference is the
# model with its adapters disabled)
CLIP = 0.05
CASES = {"text": [(aggregation, mu, accumulation, None) for aggregation in ("token-mean", "seq-mean-token-mean")
                  for mu in (1, 2) for accumulation in (1, 3)]
         + [("seq-mean-token-mean", 2, 3, "checkpointing"), ("seq-mean-token-mean", 2, 1, "lora"),
            ("seq-mean-token-mean", 2, 3, "lora"), ("seq-mean-token-mean", 2, 1, "clipped"),
            ("seq-mean-token-mean", 2, 3, "clipped")],
         "vlm": [("seq-mean-token-mean", mu, accumulation, None) for mu in (1, 2) for accumulation in (1, 3)]
         + [("seq-mean-token-mean", 2, 3, "checkpointing")]}


def global_batch(vocab: int) -> RolloutBatch:
    """4 groups x 4 completions of uneven lengths, each group's prompt shared (left padded on groups 0
    and 3), fixed advantages (deterministic)."""
    g = torch.Generator().manual_seed(123)
    p, c = 5, 6
    prompt_mask = torch.ones(4, p, dtype=torch.long)
    prompt_mask[::3, :2] = 0
    prompt_ids = torch.randint(8, vocab, (4, p), generator=g) * prompt_mask
    lengths = torch.randint(1, c + 1, (16,), generator=g)
    completion_mask = (torch.arange(c)[None] < lengths[:, None]).long()
    return RolloutBatch(
        prompt_ids=prompt_ids.repeat_interleave(4, 0), prompt_mask=prompt_mask.repeat_interleave(4, 0),
        completion_ids=torch.randint(8, vocab, (16, c), generator=g) * completion_mask,
        completion_mask=completion_mask, group_ids=torch.arange(4).repeat_interleave(4),
        advantages=torch.randn(16, generator=g))


def global_vlm_batch(adapter: VLMAdapter, vocab: int) -> RolloutBatch:
    """4 groups x 4 completions: prompts with one or two images of different sizes (so rows carry
    different numbers of vision patches), completions of uneven lengths, fixed advantages."""
    g = torch.Generator().manual_seed(7)
    sizes = [[(64, 64)], [(96, 64), (32, 32)], [(32, 64)], [(64, 32)]]
    examples = [{"prompt": [{"role": "user", "content": [
        *({"type": "image", "image": Image.new("RGB", wh, (40 * i, 200 - 30 * i, 90))} for wh in images),
        {"type": "text", "text": f"How many squares? {i}"}]}], "answer": "1"} for i, images in enumerate(sizes)]
    texts = [" ".join(str(int(t)) for t in torch.randint(0, 100, (int(n),), generator=g))
             for n in torch.randint(1, 4, (16,), generator=g)]
    batch = adapter.encode([e for e in examples for _ in range(4)], texts)
    batch.group_ids = torch.arange(4).repeat_interleave(4)
    batch.advantages = torch.randn(16, generator=g)
    return batch


def build(kind: str):
    """(model, adapter, global batch) of the tiny text model or VLM."""
    tok = build_tokenizer()
    if kind == "text":
        model = build_tiny_causal_lm(tok, hidden_size=32, intermediate_size=64, seed=0)
        return model, CausalLMAdapter(tok, prefix_sharing=True), global_batch(len(tok))
    adapter = VLMAdapter(build_processor(tok), min_pixels=28 * 28, max_pixels=84 * 84, prefix_sharing=True)
    return build_tiny_vlm(tok, seed=0), adapter, global_vlm_batch(adapter, len(tok))


def run_case(accelerator: Accelerator, kind: str, sharded: bool, aggregation: str, num_iterations: int,
             accumulation: int, variant: str | None) -> dict:
    """One update of a fresh tiny model on this rank's share of the global batch: (parameters, loss)."""
    overrides = [f"algorithm.aggregation={aggregation}", f"algorithm.num_iterations={num_iterations}",
                 f"trainer.gradient_accumulation_steps={accumulation}",
                 f"optim.max_grad_norm={CLIP if variant == 'clipped' else 1e9}",
                 "rollout.max_new_tokens=6"]
    if num_iterations > 1:
        overrides += ["algorithm.beta=0.04", "algorithm.llds_coef=0.5", "algorithm.llds_nonneg_advantage=false",
                      "algorithm.loss_params={eps: 0.05}"]
    cfg = load_config(None, [*overrides, f"trainer.sharding={'fsdp2' if sharded else 'none'}"])
    model, adapter, batch = build(kind)
    reference = None
    if variant == "checkpointing":
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if variant == "lora":
        from peft import LoraConfig, get_peft_model
        torch.manual_seed(0)  # LoRA's A matrices start random: the same on every rank and in every run
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    else:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    if sharded:
        model = sharding.place(model, cfg, accelerator)
        reference = sharding.place(reference, cfg, accelerator) if reference is not None else None
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    scheduler = build_scheduler(optimizer, cfg.optim, 10)
    if not sharded:
        model, optimizer = accelerator.prepare(model, optimizer)
    batch = batch.shard_by_group(accelerator.process_index, accelerator.num_processes).to(accelerator.device)
    record_behaviour_logps(cfg, accelerator, adapter, model, reference, batch)
    stats = policy_update(cfg, accelerator, adapter, model, optimizer, scheduler, batch)
    loss = accelerator.reduce(torch.tensor(stats["loss/total"], device=accelerator.device), "mean").item()
    state = full_state_dict(model) if sharded else accelerator.unwrap_model(model).state_dict()
    params = {k: v.detach().cpu().clone() for k, v in state.items()}
    return {"params": params, "loss": loss, "llds_active": stats.get("llds/active_tokens", 0.0),
            "grad_norm": stats["optim/grad_norm"]}


def main(out_path: str, mode: str = "none", kind: str = "text"):
    accelerator = Accelerator()
    sharded = mode == "fsdp2"
    results = {case: run_case(accelerator, kind, sharded, *case) for case in CASES[kind]}
    if accelerator.is_main_process:
        torch.save({"cases": results, "world_size": accelerator.num_processes, "sharding": mode}, out_path)
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(*sys.argv[1:])
    end_processes()
