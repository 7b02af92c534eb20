"""The supervised warm-up's batches and learning-rate schedule, by hand."""
import math

import pytest
import torch

from mmrl.core.sft import sft_batches, sft_lr_factor


def test_sft_epochs_and_cosine_schedule_by_hand():
    """TON's SFT stage (LLaMA-Factory): shuffled passes over the data, lr warm-up over the first 10% of
    steps, then cosine to 0. 5 examples, batches of 2: the first 5 indices are one permutation."""
    drawn = torch.cat(list(sft_batches(5, 2, 5, "epochs", torch.Generator().manual_seed(0)))).tolist()
    assert sorted(drawn[:5]) == [0, 1, 2, 3, 4] and sorted(drawn[5:10]) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="sft.sampling"):
        next(sft_batches(5, 2, 1, "cycle", torch.Generator()))
    factors = [sft_lr_factor(step, 20, "cosine", 0.1) for step in range(20)]
    assert factors[:2] == [0.5, 1.0]  # warm-up over ceil(0.1 * 20) = 2 steps
    assert factors[2] == 1.0 and factors[11] == pytest.approx(0.5 * (1 + math.cos(math.pi * 9 / 18)))
    assert factors[19] == pytest.approx(0.5 * (1 + math.cos(math.pi * 17 / 18)))
    assert sft_lr_factor(7, 20, "constant", 0.0) == 1.0
