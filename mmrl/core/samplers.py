"""Prompt samplers with explicit state, identical on every rank (same seed, same draws)."""
from __future__ import annotations

import torch


class UniformSampler:
    """Shuffled passes (epochs) over the prompt set; each call returns the next `n` indices."""

    def __init__(self, num_prompts: int, seed: int = 0):
        self.num_prompts = num_prompts
        self.generator = torch.Generator().manual_seed(seed)
        self.order: list[int] = []
        self.position = 0
        self.epoch = 0

    def sample(self, n: int) -> list[int]:
        out = []
        while len(out) < n:
            if self.position >= len(self.order):
                self.order = torch.randperm(self.num_prompts, generator=self.generator).tolist()
                self.position, self.epoch = 0, self.epoch + 1
            take = min(n - len(out), len(self.order) - self.position)
            out += self.order[self.position:self.position + take]
            self.position += take
        return out

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": list(self.order),
                "position": self.position, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.position, self.epoch = list(state["order"]), state["position"], state["epoch"]
