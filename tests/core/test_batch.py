import pytest
import torch

from mmrl.core.batch import RolloutBatch


def make_batch(groups=4, group_size=3):
    n = groups * group_size
    return RolloutBatch(
        prompt_ids=torch.arange(n * 2).reshape(n, 2), prompt_mask=torch.ones(n, 2, dtype=torch.long),
        completion_ids=torch.arange(n * 3).reshape(n, 3), completion_mask=torch.ones(n, 3, dtype=torch.long),
        group_ids=torch.arange(groups).repeat_interleave(group_size), rewards=torch.arange(n * 2.0).reshape(n, 2),
        reward_names=["a", "b"], advantages=torch.arange(float(n)), extras={"pixels": torch.zeros(n, 5)},
        examples=[{"i": i} for i in range(n)], completions_text=[str(i) for i in range(n)])


def test_shard_by_group_gives_each_rank_whole_groups():
    b = make_batch()
    r0, r1 = b.shard_by_group(0, 2), b.shard_by_group(1, 2)
    assert r0.group_ids.tolist() == [0, 0, 0, 1, 1, 1] and r1.group_ids.tolist() == [2, 2, 2, 3, 3, 3]
    assert r1.completions_text == ["6", "7", "8", "9", "10", "11"] and r1.examples[0] == {"i": 6}
    assert r1.extras["pixels"].shape == (6, 5) and r1.rewards[0].tolist() == [12.0, 13.0]
    assert r1.reward_names == ["a", "b"]
    with pytest.raises(ValueError, match="4 groups cannot be split evenly over 3 ranks"):
        b.shard_by_group(0, 3)


def test_micro_batches_and_device_move():
    b = make_batch()
    parts = b.micro_batches(3)
    assert [p.advantages.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    # uneven splits are near-equal (groups of unequal size make uneven row counts normal)
    assert [len(p) for p in b.micro_batches(5)] == [2, 2, 3, 2, 3]
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        b.micro_batches(13)
    # whole groups: cuts only between groups of 3 rows
    assert [p.group_ids.unique().tolist() for p in b.micro_batches(3, whole_groups=True)] == [[0], [1], [2, 3]]
    with pytest.raises(ValueError, match="whole groups"):
        b.micro_batches(5, whole_groups=True)
    moved = b.to("cpu")
    assert moved.extras["pixels"].device.type == "cpu" and moved.rewards.device.type == "cpu"
    assert moved.completion_lengths.tolist() == [3] * 12 and len(moved) == 12


def test_concat_repads_and_keeps_groups_distinct():
    a = make_batch(groups=1, group_size=2)
    b = make_batch(groups=2, group_size=1)
    b.prompt_ids, b.prompt_mask = b.prompt_ids[:, :1], b.prompt_mask[:, :1]
    b.completion_ids, b.completion_mask = torch.cat([b.completion_ids, b.completion_ids], 1), torch.ones(2, 6, dtype=torch.long)
    b.example_index, a.example_index = torch.tensor([7, 8]), torch.tensor([3, 3])
    c = RolloutBatch.concat([a, b])
    assert c.group_ids.tolist() == [0, 0, 1, 2] and c.example_index.tolist() == [3, 3, 7, 8]
    assert c.prompt_mask.tolist()[2] == [0, 1] and c.prompt_ids.shape == (4, 2)  # left padded
    assert c.completion_mask.tolist()[0] == [1, 1, 1, 0, 0, 0]  # right padded
    assert c.completions_text == ["0", "1", "0", "1"] and len(c.examples) == 4
