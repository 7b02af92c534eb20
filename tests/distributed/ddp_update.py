"""One policy update on a fixed global batch, run with 1 or 2 processes; rank 0 saves the parameters.

    python tests/distributed/ddp_update.py OUT.pt 2          # 1 process, 2 micro-batches
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 tests/distributed/ddp_update.py OUT.pt 1
"""
import sys

import torch
from accelerate import Accelerator

from mmrl.config import load_config
from mmrl.core.batch import RolloutBatch
from mmrl.core.trainer import end_processes, build_scheduler, policy_update
from mmrl.models.tiny import build_tiny_causal_lm, build_tokenizer
from mmrl.text import CausalLMAdapter


def global_batch(vocab: int) -> RolloutBatch:
    """4 groups x 4 completions with uneven lengths and fixed advantages (deterministic)."""
    g = torch.Generator().manual_seed(123)
    n, p, c = 16, 5, 6
    prompt_mask = torch.ones(n, p, dtype=torch.long)
    prompt_mask[::3, :2] = 0  # left padding on some rows
    lengths = torch.randint(1, c + 1, (n,), generator=g)
    completion_mask = (torch.arange(c)[None] < lengths[:, None]).long()
    return RolloutBatch(
        prompt_ids=torch.randint(8, vocab, (n, p), generator=g) * prompt_mask,
        prompt_mask=prompt_mask,
        completion_ids=torch.randint(8, vocab, (n, c), generator=g) * completion_mask,
        completion_mask=completion_mask,
        group_ids=torch.arange(4).repeat_interleave(4),
        advantages=torch.randn(n, generator=g),
        ref_logp=-torch.rand(n, c, generator=g) * 5,
    )


def main(out_path: str, accumulation: int, aggregation: str):
    cfg = load_config(None, ["algorithm.beta=0.04", f"algorithm.aggregation={aggregation}",
                             f"trainer.gradient_accumulation_steps={accumulation}", "optim.lr=1e-2",
                             "rollout.max_new_tokens=6"])
    accelerator = Accelerator()
    tok = build_tokenizer()
    model = build_tiny_causal_lm(tok, hidden_size=32, intermediate_size=64, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
    scheduler = build_scheduler(optimizer, cfg.optim, 10)
    model, optimizer = accelerator.prepare(model, optimizer)
    batch = global_batch(len(tok)).shard_by_group(accelerator.process_index, accelerator.num_processes)
    stats = policy_update(cfg, accelerator, CausalLMAdapter(tok), model, optimizer, scheduler,
                          batch.to(accelerator.device))
    loss = accelerator.reduce(torch.tensor(stats["loss"], device=accelerator.device), "mean").item()
    if accelerator.is_main_process:
        state = {k: v.detach().cpu() for k, v in accelerator.unwrap_model(model).state_dict().items()}
        torch.save({"params": state, "world_size": accelerator.num_processes, "loss": loss}, out_path)
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "token-mean")
    end_processes()
