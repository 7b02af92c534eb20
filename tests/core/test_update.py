"""The trainer's update pieces on a tiny model in one process: old log-probs on the update's own
micro-batches, split invariance of the whole update (LLDS included), KL as a reward penalty, and the
config checks on the KL term and on sequence-level losses."""
import logging
import math

import pytest
import torch
from accelerate import Accelerator

from mmrl.config import load_config
from mmrl.core import trainer
from mmrl.models.tiny import build_tiny_causal_lm, build_tokenizer
from mmrl.text import CausalLMAdapter
from tests.distributed.ddp_update import global_batch, run_case


@pytest.fixture
def accelerator():
    return Accelerator(cpu=True)


def test_old_logprobs_come_from_the_update_micro_batches(accelerator):
    """reg_grpo trains on whole groups (GA 3 over 4 groups: 4, 4, 8 rows); the old log-probs were
    recorded on a row split (5, 5, 6), where packing differs, so the first inner ratio was not exactly 1
    (4.8e-7 in fp32). Recorded on the update's split, they equal the update's first forward bit for bit."""
    cfg = load_config(None, ["algorithm.loss=reg_grpo", "algorithm.num_iterations=2",
                             "trainer.gradient_accumulation_steps=3", "rollout.max_new_tokens=6"])
    tok = build_tokenizer()
    model = build_tiny_causal_lm(tok, hidden_size=32, intermediate_size=64, seed=0)
    adapter = CausalLMAdapter(tok, prefix_sharing=True)
    batch = global_batch(len(tok))
    trainer.record_behaviour_logps(cfg, accelerator, adapter, model, None, batch)
    chunks = trainer.update_chunks(cfg, batch)
    assert [len(c) for c in chunks] == [4, 4, 8]
    for mb in chunks:
        assert torch.equal(adapter.log_probs(model, mb), mb.old_logp)


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean"])
def test_update_does_not_depend_on_the_micro_batch_split(accelerator, aggregation):
    """Two SGD steps (lr 1, no clipping) with KL and LLDS: one micro-batch vs an uneven 5 / 5 / 6 split.
    LLDS normalised per micro-batch (the old code) scaled its gradient with the number of them."""
    whole = run_case(accelerator, "text", False, aggregation, 2, 1, None)
    split = run_case(accelerator, "text", False, aggregation, 2, 3, None)
    assert whole["llds_active"] > 0
    assert split["loss"] == pytest.approx(whole["loss"], abs=1e-6)
    for name, value in whole["params"].items():
        torch.testing.assert_close(split["params"][name], value, atol=1e-5, rtol=0, msg=name)


def test_kl_as_a_reward_penalty_by_hand():
    """Two rows of two tokens (the second row's last token is padding), k1 KL: behaviour [-1, -2],
    [-1, x], reference [-1.5, -1], [-0.5, y]: sum_t KL = 0.5 - 1 = -0.5 and -0.5. The column is -KL
    = [0.5, 0.5] with weight beta, after the configured rewards."""
    from mmrl.core.batch import RolloutBatch

    cfg = load_config(None, ["algorithm.beta=0.1", "algorithm.kl_penalty=reward", "algorithm.kl_estimator=k1",
                             "rewards=[{name: accuracy_math, weight: 2.0}]"])
    batch = RolloutBatch(prompt_ids=torch.ones(2, 1, dtype=torch.long), prompt_mask=torch.ones(2, 1),
                         completion_ids=torch.ones(2, 2, dtype=torch.long), completion_mask=torch.tensor([[1, 1], [1, 0]]),
                         group_ids=torch.tensor([0, 0]), rewards=torch.tensor([[1.0], [0.0]]), reward_names=["accuracy_math"],
                         reward_weights=[2.0], ref_logp=torch.tensor([[-1.5, -1.0], [-0.5, -9.0]]))
    trainer.add_kl_reward_penalty(cfg, batch, torch.tensor([[-1.0, -2.0], [-1.0, -3.0]]))
    assert batch.reward_names == ["accuracy_math", "kl_penalty"]
    assert batch.rewards[:, 1].tolist() == [0.5, 0.5]
    assert batch.reward_weights == [2.0, 0.1]
    # the total the advantage sees: 2 r - beta KL = [2.05, 0.05]
    assert batch.total_reward().tolist() == pytest.approx([2.05, 0.05])


def test_kl_in_reward_leaves_no_kl_term_in_the_loss(accelerator):
    """Zero advantages and a reference 0.5 nats below the policy on every token: the loss is beta k3
    with kl_penalty: loss, and 0 with kl_penalty: reward (the KL went into the rewards instead)."""
    tok = build_tokenizer()
    losses_by_placement = {}
    for placement in ("loss", "reward"):
        cfg = load_config(None, ["algorithm.beta=0.5", f"algorithm.kl_penalty={placement}", "rollout.max_new_tokens=6"])
        model = build_tiny_causal_lm(tok, hidden_size=32, intermediate_size=64, seed=0)
        adapter = CausalLMAdapter(tok)
        batch = global_batch(len(tok))
        batch.advantages = torch.zeros(len(batch))
        with torch.no_grad():
            batch.ref_logp = adapter.log_probs(model, batch) - 0.5
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        stats = trainer.policy_update(cfg, accelerator, adapter, model, optimizer,
                                      trainer.build_scheduler(optimizer, cfg.optim, 1), batch)
        losses_by_placement[placement] = stats["loss/total"]
    assert losses_by_placement["loss"] == pytest.approx(0.5 * (math.exp(-0.5) + 0.5 - 1), rel=1e-4)
    assert losses_by_placement["reward"] == 0.0


def test_kl_in_reward_runs_and_logs_its_column(tmp_path):
    from tests.integration.helpers import run_text

    log, _ = run_text(tmp_path, "trainer.max_steps=2", "algorithm.beta=0.05", "algorithm.kl_penalty=reward",
                      "algorithm.kl_estimator=k1")
    first, last = log.history
    assert first["reward/kl_penalty/mean"] == 0.0  # the reference is the policy before the first update
    assert math.isfinite(last["reward/kl_penalty/mean"]) and "kl/mean" in last


def test_kl_checks_warn_and_sequence_losses_take_their_aggregation(caplog):
    caplog.set_level(logging.WARNING)
    cfg = load_config(None, ["algorithm.beta=0.1", "algorithm.kl_estimator=k1"])
    trainer.validate_kl_and_aggregation(cfg.algorithm)
    assert "zero expected gradient" in caplog.text
    cfg = load_config(None, ["algorithm.loss=gspo", "algorithm.aggregation=token-mean"])
    trainer.validate_kl_and_aggregation(cfg.algorithm)
    assert cfg.algorithm.aggregation == "seq-mean-token-mean" and "weight loss 'gspo'" in caplog.text
    with pytest.raises(ValueError, match="algorithm.kl_penalty"):
        trainer.validate_kl_and_aggregation(load_config(None, ["algorithm.kl_penalty=both"]).algorithm)
    with pytest.raises(ValueError, match="algorithm.kl_clamp"):
        trainer.validate_kl_and_aggregation(load_config(None, ["algorithm.kl_clamp=0"]).algorithm)


def test_deepspeed_is_refused_at_start(monkeypatch):
    """Under DeepSpeed, accelerate's backward steps the engine on every micro-batch (GA optimizer steps
    per inner update) and the reference deep copy of a ZeRO-3 model holds shards: refused, naming
    trainer.sharding: fsdp2; so is an accelerate config with fsdp_config (mmrl shards by itself)."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    fake = SimpleNamespace(num_processes=1, distributed_type=DistributedType.DEEPSPEED)
    monkeypatch.setattr(trainer, "Accelerator", lambda **kwargs: fake)
    with pytest.raises(NotImplementedError, match="DeepSpeed is not supported.*trainer.sharding: fsdp2"):
        trainer.make_accelerator(load_config(None, []))
    fake.distributed_type = DistributedType.FSDP
    with pytest.raises(NotImplementedError, match="set trainer.sharding: fsdp2"):
        trainer.make_accelerator(load_config(None, []))


def sgd_update(accelerator, batch, overrides=()):
    """One SGD step (lr 1, KL to a reference) of a fresh tiny model on `batch`: (parameters, stats)."""
    import copy

    cfg = load_config(None, ["rollout.max_new_tokens=6", "algorithm.beta=0.04", "optim.max_grad_norm=1e9",
                             *overrides])
    tok = build_tokenizer()
    model = build_tiny_causal_lm(tok, hidden_size=32, intermediate_size=64, seed=0)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = trainer.build_scheduler(optimizer, cfg.optim, 10)
    adapter = CausalLMAdapter(tok, prefix_sharing=True)
    trainer.record_behaviour_logps(cfg, accelerator, adapter, model, reference, batch)
    stats = trainer.policy_update(cfg, accelerator, adapter, model, optimizer, scheduler, batch)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, stats


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean"])
def test_a_group_a_reward_failed_on_leaves_the_update_as_if_it_were_not_there(accelerator, aggregation):
    """on_error: drop. One failed row in group 2 drops all 4 of its rows: the step equals the step on the
    batch without group 2 (policy-gradient and KL terms, and the denominators, which count 12 rows)."""
    from tests.distributed.ddp_update import global_batch

    batch = global_batch(len(build_tokenizer()))
    batch.reward_failed = torch.zeros(16, dtype=torch.bool)
    batch.reward_failed[9] = True
    dropped, stats = sgd_update(accelerator, batch, [f"algorithm.aggregation={aggregation}"])
    without, _ = sgd_update(accelerator, batch.select(torch.tensor([*range(8), *range(12, 16)])),
                            [f"algorithm.aggregation={aggregation}"])
    kept_all, _ = sgd_update(accelerator, global_batch(len(build_tokenizer())), [f"algorithm.aggregation={aggregation}"])
    assert stats["nonfinite/skipped_updates"] == 0
    assert any(not torch.equal(without[k], kept_all[k]) for k in without)  # group 2 does matter when kept
    for name, value in without.items():
        torch.testing.assert_close(dropped[name], value, atol=1e-6, rtol=1e-5, msg=name)


def test_a_non_finite_loss_skips_the_update(accelerator):
    from tests.distributed.ddp_update import global_batch

    batch = global_batch(len(build_tokenizer()))
    batch.advantages[3] = float("nan")
    after, stats = sgd_update(accelerator, batch)
    tok = build_tokenizer()
    before = build_tiny_causal_lm(tok, hidden_size=32, intermediate_size=64, seed=0).state_dict()
    assert stats["nonfinite/skipped_updates"] == 1 and not math.isfinite(stats["loss/total"])
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_advantages_leave_out_the_groups_a_reward_failed_on():
    """GRPO over groups [1, 0] (failed), [1, 0], [0, 1]: the failed group gets 0; the others their
    group z-scores +-0.7071 (the same with or without it); the sampler sees only the kept groups."""
    cfg = load_config(None, ["rewards=[{name: accuracy_math}]"])
    rows = trainer.GlobalRows(rewards=torch.tensor([[1.0], [0.0], [1.0], [0.0], [0.0], [1.0]]),
                              group_ids=torch.tensor([0, 0, 1, 1, 2, 2]), example_index=torch.tensor([5, 5, 6, 6, 7, 7]),
                              lengths=torch.ones(6), offset=0,
                              dropped=torch.tensor([True, True, False, False, False, False]))
    state = trainer.AlgorithmState(cfg, 10)
    seen = []
    state.sampler.update = lambda indices, successes, **kw: seen.append(indices)
    adv = trainer.compute_advantages(cfg, rows, state, None)
    r = 1 / math.sqrt(2)
    assert adv.tolist() == pytest.approx([0, 0, r, -r, -r, r], abs=1e-4)
    assert seen == [[6, 7]]


def test_the_sampler_and_dgpo_read_the_reward_marked_as_success():
    """Two rewards, format (column 0) then accuracy (column 1, `success: true`): the sampler's successes
    and DGPO's question weights come from accuracy, not from column 0. DGPO by hand: groups [1, 0] and
    [1, 1, 0] of accuracy at weights (0, 1) -> totals equal accuracy; acc_q = 0.5 and 2/3, so
    w = 2 softmax(-acc / 2) = (1.0417, 0.9583); MAD_1 = 0.5 -> A = +-1.0 x 1.0417; group 2: mean 2/3,
    MAD 4/9 -> A = (0.75, 0.75, -1.5) x 0.9583. Column 0 (format: [0, 0], [1, 1, 1]) would give the
    sampler those values and DGPO weights (1, 1)."""
    cfg = load_config(None, ["rewards=[{name: format, weight: 0.0}, {name: accuracy_math, success: true}]",
                             "algorithm.advantage=dgpo"])
    rows = trainer.GlobalRows(rewards=torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0], [1.0, 0.0]]),
                              group_ids=torch.tensor([0, 0, 1, 1, 1]), example_index=torch.tensor([3, 3, 4, 4, 4]),
                              lengths=torch.ones(5), offset=0)
    state = trainer.AlgorithmState(cfg, 10)
    seen = []
    state.sampler.update = lambda indices, successes, **kw: seen.append(successes)
    adv = trainer.compute_advantages(cfg, rows, state)
    w1, w2 = (2 * torch.softmax(torch.tensor([-0.25, -1 / 3]), 0)).tolist()
    assert adv.tolist() == pytest.approx([w1, -w1, 0.75 * w2, 0.75 * w2, -1.5 * w2], abs=1e-3)
    assert seen == [[[1.0, 0.0], [1.0, 1.0, 0.0]]]


def test_two_success_rewards_are_refused():
    cfg = load_config(None, ["rewards=[{name: format, success: true}, {name: accuracy_math, success: true}]"])
    with pytest.raises(ValueError, match="rewards.0, rewards.1 all set success: true"):
        trainer.validate(cfg, 1)


def test_clip_statistics_average_every_inner_update(accelerator):
    """loss/ratio_mean over mu = 2 inner updates is (1 + r) / 2: 1 on the first (on-policy) update and,
    on the second, r = the token mean of pi_1 / pi_0 with pi_1 the model after one step (measured here
    from a one-update run). The entropy stays the first update's."""
    from mmrl.core.losses import masked_mean
    from tests.distributed.ddp_update import global_batch

    tok = build_tokenizer()
    adapter = CausalLMAdapter(tok, prefix_sharing=True)
    one_step, one = sgd_update(accelerator, global_batch(len(tok)), ["algorithm.loss_params={eps: 0.001}"])
    two_steps, two = sgd_update(accelerator, global_batch(len(tok)), ["algorithm.loss_params={eps: 0.001}",
                                                                       "algorithm.num_iterations=2"])
    batch = global_batch(len(tok))
    model = build_tiny_causal_lm(tok, hidden_size=32, intermediate_size=64, seed=0)
    with torch.no_grad():
        before = adapter.log_probs(model, batch)
        model.load_state_dict(one_step)
        after = adapter.log_probs(model, batch)
    ratio = masked_mean((after - before).exp(), batch.completion_mask.to(after.dtype)).item()
    assert one["loss/ratio_mean"] == pytest.approx(1.0) and one["loss/clip_frac"] == 0
    assert abs(ratio - 1) > 1e-3  # the step moved the policy (by 0.9% here)
    assert two["loss/ratio_mean"] == pytest.approx((1 + ratio) / 2, rel=1e-4)
    assert two["loss/clip_frac"] > 0 and two["policy/entropy"] == pytest.approx(one["policy/entropy"])
