"""Policy updates on a fixed global batch, run with 1 or 2 processes; rank 0 saves the parameters.

Every case starts from the same tiny model and takes `num_iterations` plain SGD steps (lr 1, no
clipping: the parameters move by exactly the summed gradient, unlike AdamW's sign-like first step)
with `gradient_accumulation_steps` micro-batches on each rank. With two inner iterations the second
update is off-policy: the clipped ratio, the k3 KL to the reference and LLDS (whose denominator is a
count over the whole batch) all act.

    python tests/distributed/ddp_update.py OUT.pt
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 tests/distributed/ddp_update.py OUT.pt
"""
import copy
import sys

import torch
from accelerate import Accelerator

from mmrl.config import load_config
from mmrl.core.batch import RolloutBatch
from mmrl.core.trainer import build_scheduler, end_processes, policy_update, record_behaviour_logps
from mmrl.models.tiny import build_tiny_causal_lm, build_tokenizer
from mmrl.text import CausalLMAdapter

CASES = [(aggregation, mu, accumulation) for aggregation in ("token-mean", "seq-mean-token-mean")
         for mu in (1, 2) for accumulation in (1, 3)]


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


def run_case(accelerator: Accelerator, aggregation: str, num_iterations: int, accumulation: int) -> dict:
    """One update of a fresh tiny model on this rank's share of the global batch: (parameters, loss)."""
    overrides = [f"algorithm.aggregation={aggregation}", f"algorithm.num_iterations={num_iterations}",
                 f"trainer.gradient_accumulation_steps={accumulation}", "optim.max_grad_norm=1e9",
                 "rollout.max_new_tokens=6"]
    if num_iterations > 1:
        overrides += ["algorithm.beta=0.04", "algorithm.llds_coef=0.5", "algorithm.llds_nonneg_advantage=false",
                      "algorithm.loss_params={eps: 0.05}"]
    cfg = load_config(None, overrides)
    tok = build_tokenizer()
    model = build_tiny_causal_lm(tok, hidden_size=32, intermediate_size=64, seed=0)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = build_scheduler(optimizer, cfg.optim, 10)
    model, optimizer = accelerator.prepare(model, optimizer)
    adapter = CausalLMAdapter(tok, prefix_sharing=True)
    batch = global_batch(len(tok)).shard_by_group(accelerator.process_index, accelerator.num_processes)
    batch = batch.to(accelerator.device)
    record_behaviour_logps(cfg, accelerator, adapter, model, reference, batch)
    stats = policy_update(cfg, accelerator, adapter, model, optimizer, scheduler, batch)
    loss = accelerator.reduce(torch.tensor(stats["loss"], device=accelerator.device), "mean").item()
    params = {k: v.detach().cpu().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
    return {"params": params, "loss": loss, "llds_active": stats.get("llds/active_tokens", 0.0)}


def main(out_path: str):
    accelerator = Accelerator()
    results = {case: run_case(accelerator, *case) for case in CASES}
    if accelerator.is_main_process:
        torch.save({"cases": results, "world_size": accelerator.num_processes}, out_path)
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
    end_processes()
