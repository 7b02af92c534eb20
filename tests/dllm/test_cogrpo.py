"""Co-GRPO on masked image generation: the scheduled sampler against diffusers' AmusedScheduler, the
schedule's token accounting, schedule-action and token log-probabilities, the alternating loss,
image rewards, checkpoints that load as an AmusedPipeline, and the tiny demo."""
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import dllm.image
from dllm.image.adapter import MaskedImageAdapter
from dllm.image.models import CoGRPOPolicy, build_tiny_amused, save_tiny_amused
from dllm.image.rewards import colour_layout, layout_clauses
from dllm.image.schedule import SchedulePolicy, schedule_from, scheduled_step
from mmrl.config import load_config
from mmrl.core import losses

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import train_mdm  # noqa: E402

CONFIG = str(ROOT / "configs" / "tiny_mdm_cogrpo.yaml")


@pytest.fixture(scope="module")
def pipeline():
    return build_tiny_amused(seed=0, palette_fit_steps=100)


def make_policy(pipeline, guidance=False):
    init = {"gamma": 1.0, "sample_temperature": 1.0, "remask_temperature": 2.0, "guidance_scale": 3.0}
    return CoGRPOPolicy(pipeline.transformer, SchedulePolicy(init, 0.2, guidance=guidance))


def test_scheduled_step_reproduces_amused_scheduler():
    """At the default schedule (gamma 1, tau 1, re-mask temperature linspace(2, 0)), every step draws
    the same random numbers as diffusers' AmusedScheduler.step and returns the same grid."""
    from diffusers import AmusedScheduler

    mask, vocab, side, steps = 8, 8, 6, 5
    stock = AmusedScheduler(mask_token_id=mask)
    stock.set_timesteps(steps, temperature=(2, 0))
    z = torch.zeros(2, 3)
    z[:, 2] = math.log(2.0)
    plan = schedule_from(z, ("gamma", "sample_temperature", "remask_temperature"), steps, side * side)
    ours = theirs = torch.full((2, side, side), mask)
    for k, t in enumerate(stock.timesteps):
        logits = torch.randn(2, vocab, side, side, generator=torch.Generator().manual_seed(k))
        theirs = stock.step(logits, t, theirs, generator=torch.Generator().manual_seed(100 + k)).prev_sample
        flat = logits.reshape(2, vocab, -1).transpose(1, 2)
        ours = scheduled_step(flat, ours.reshape(2, -1), plan.remaining[:, k], plan.sample_temperature,
                              plan.remask_temperature[:, k], mask, last=k == steps - 1,
                              generator=torch.Generator().manual_seed(100 + k)).view(2, side, side)
        assert torch.equal(ours, theirs), f"step {k}"
    assert (ours != mask).all()


def test_schedule_values_by_hand():
    z = torch.tensor([[math.log(2.0), math.log(0.5), math.log(3.0)]])
    plan = schedule_from(z, ("gamma", "sample_temperature", "remask_temperature"), 4, 100)
    # remaining after step k: floor(100 cos(pi/2 ((k+1)/4)^2)), the last step 0
    expected = [math.floor(100 * math.cos(math.pi / 2 * ((k + 1) / 4) ** 2)) for k in range(3)] + [0]
    assert plan.remaining[0].tolist() == expected == [99, 92, 63, 0]  # cos(0.098), cos(0.393), cos(0.884)
    assert plan.sample_temperature.tolist() == pytest.approx([0.5])
    assert plan.remask_temperature[0].tolist() == pytest.approx([3.0, 2.0, 1.0, 0.0])


@pytest.mark.parametrize("gamma", [0.3, 1.0, 3.0])
def test_trajectory_commits_every_token_once(pipeline, gamma):
    """Whatever the schedule, the sampler commits each of the L tokens exactly once, at least one per
    step, never more than the schedule leaves masked, and the final image has no mask token."""
    policy = make_policy(pipeline)
    with torch.no_grad():
        policy.schedule.mean[0] = math.log(gamma)
    adapter = MaskedImageAdapter(pipeline, steps=5)
    examples = [{"prompt": "red left, blue right"}, {"prompt": "green top, white bottom"}]
    torch.manual_seed(0)
    batch = adapter.generate(policy, examples, 3)
    tokens, commit, states = batch.completion_ids[:, :-1], batch.extras["commit_step"], batch.extras["states"]
    length = tokens.shape[1]
    assert length == adapter.grid ** 2 and (tokens != adapter.mask_token_id).all()
    assert (commit >= 0).all() and (commit < 5).all()
    plan = schedule_from(batch.extras["schedule_z"], policy.schedule.knobs, 5, length)
    for r in range(len(batch)):
        per_step = torch.bincount(commit[r], minlength=5)
        assert per_step.sum() == length and (per_step >= 1).all()
        masked_before = (states[r] == adapter.mask_token_id).sum(-1)
        assert masked_before[0] == length
        assert torch.equal(masked_before[1:], length - per_step.cumsum(0)[:-1])
        assert (masked_before[1:] <= plan.remaining[r, :-1].clamp(min=1)).all()
        # a committed token never changes afterwards
        for k in range(5):
            fixed = states[r, k] != adapter.mask_token_id
            assert torch.equal(states[r, k][fixed], tokens[r][fixed])
    assert len(batch.completions_text) == 6 and batch.completions_text[0].size == (32, 32)


def test_schedule_log_prob_by_hand():
    policy = SchedulePolicy({"gamma": 1.0, "sample_temperature": 1.0, "remask_temperature": 2.0}, 0.2)
    z = torch.tensor([[0.2, -0.4, math.log(2.0)]])
    # sum over 3 knobs of -0.5 ((z - mu) / sigma)^2 - log sigma - 0.5 log(2 pi), (z - mu) / sigma = 1, -2, 0
    expected = -0.5 * (1 + 4 + 0) - 3 * math.log(0.2) - 1.5 * math.log(2 * math.pi)
    assert policy.log_prob(z).item() == pytest.approx(expected, abs=1e-5)
    assert expected == pytest.approx(-0.4286, abs=1e-4)


def test_token_log_probs_match_each_step(pipeline):
    """log pi_theta of a token = log softmax(logits at the grid it was committed from / tau)[token],
    recomputed here directly with the transformer."""
    policy = make_policy(pipeline)
    adapter = MaskedImageAdapter(pipeline, steps=3)
    torch.manual_seed(1)
    batch = adapter.generate(policy, [{"prompt": "red top, blue bottom"}], 2)
    terms = adapter.log_probs(policy, batch)
    text = adapter.text_of(batch)
    tau = batch.extras["schedule_z"][:, 1].exp()
    for r in range(2):
        for pos in (0, 17, 255):
            k = int(batch.extras["commit_step"][r, pos])
            state = batch.extras["states"][r:r + 1, k].view(1, 16, 16)
            logits = pipeline.transformer(state, micro_conds=text["micro_conds"][r:r + 1],
                                          pooled_text_emb=text["pooled"][r:r + 1],
                                          encoder_hidden_states=text["hidden"][r:r + 1])
            logp = torch.log_softmax(logits[0, :, pos // 16, pos % 16] / tau[r], -1)[batch.completion_ids[r, pos]]
            assert terms[r, pos].item() == pytest.approx(logp.item(), abs=1e-5)
    assert torch.allclose(terms[:, -1], policy.schedule.log_prob(batch.extras["schedule_z"]))


def test_guidance_scale_mixes_logits(pipeline):
    policy = make_policy(pipeline, guidance=True)
    adapter = MaskedImageAdapter(pipeline, steps=3, guidance=True)
    text = adapter.encode_text(["red left, blue right"], "cpu")
    sample = torch.full((1, 16, 16), adapter.mask_token_id)
    scale = torch.tensor([3.0])
    guided = policy.step_logits(sample, text, scale)
    cond = policy.step_logits(sample, text, None)
    uncond = policy.step_logits(sample, {**text, "pooled": text["uncond_pooled"], "hidden": text["uncond_hidden"]}, None)
    assert torch.allclose(guided, uncond + 3.0 * (cond - uncond), atol=1e-5)


def test_alternating_loss_by_hand():
    """The core's clipped loss on the [N, L + 1] layout: a schedule step counts only the schedule
    column, l = -mean_i min(r_i A_i, clip(r_i) A_i); a token step only the token columns."""
    cfg = load_config(CONFIG)
    logp = torch.tensor([[-1.0, -2.0, 0.5], [-1.5, -0.5, -0.3]])
    old = torch.tensor([[-1.0, -2.0, 0.2], [-1.5, -0.5, 0.0]])
    adv = torch.tensor([1.0, -2.0])
    batch = SimpleNamespace(completion_mask=torch.ones(2, 3, dtype=torch.long), extras={})
    acc = SimpleNamespace(unwrap_model=lambda m: m)
    model = make_policy_stub()
    _, stats = dllm.image.alternate_policies(cfg, acc, None, model, batch, step=1)  # odd step: schedule
    mask = batch.loss_mask
    assert mask.tolist() == [[0, 0, 1], [0, 0, 1]] and stats["cogrpo/trains_schedule"] == 1.0
    token_loss, _ = losses.LOSSES.get("grpo")(logp, old, adv, mask.float(), eps=0.2)
    loss = (token_loss * mask).sum() / mask.sum()
    r = [math.exp(0.3), math.exp(-0.3)]
    # row 0: A = 1, r = 1.35 > 1.2, clipped: -1.2; row 1: A = -2, r = 0.741 < 0.8: min(-1.48, -1.6) = -1.6 -> +1.6
    expected = (-min(r[0] * 1, 1.2 * 1) + -min(r[1] * -2, 0.8 * -2)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6) and expected == pytest.approx((-1.2 + 1.6) / 2)
    dllm.image.alternate_policies(cfg, acc, None, model, batch, step=2)  # even step: tokens
    assert batch.loss_mask.tolist() == [[1, 1, 0], [1, 1, 0]]


def make_policy_stub():
    return SimpleNamespace(schedule=SchedulePolicy({"gamma": 1.0, "sample_temperature": 1.0, "remask_temperature": 2.0}))


def test_each_phase_trains_only_its_policy(pipeline):
    policy = make_policy(pipeline)
    adapter = MaskedImageAdapter(pipeline, steps=3)
    torch.manual_seed(2)
    batch = adapter.generate(policy, [{"prompt": "red left, blue right"}], 2)
    for column, trained, frozen in ((slice(-1, None), "schedule", "transformer"),
                                    (slice(0, -1), "transformer", "schedule")):
        policy.zero_grad()
        adapter.log_probs(policy, batch)[:, column].sum().backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(policy, trained).parameters())
        assert all(p.grad is None or p.grad.abs().sum() == 0 for p in getattr(policy, frozen).parameters())


def test_colour_layout_reward_by_hand():
    image = np.zeros((4, 4, 3), np.uint8)
    image[:, :2] = (250, 10, 10)  # left half red
    image[:, 2:] = (10, 10, 240)  # right half blue
    image[0, 3] = (240, 240, 240)  # one white pixel on the right
    pil = Image.fromarray(image)
    examples = [{"prompt": "red left, blue right"}, {"prompt": "blue left, red right"}, {"prompt": "a red image"},
                {"prompt": "blue top, red bottom"}]
    scores = colour_layout([pil] * 4, examples)
    # red left 8/8, blue right 7/8 -> 0.9375; swapped: 0; red anywhere 8/16; top: blue 3/8, bottom: red 4/8
    assert scores == pytest.approx([0.9375, 0.0, 0.5, (3 / 8 + 4 / 8) / 2])
    assert layout_clauses("Green top, YELLOW bottom") == [("green", "top"), ("yellow", "bottom")]
    with pytest.raises(ValueError, match="no colour"):
        colour_layout([pil], [{"prompt": "a dog"}])


@pytest.fixture
def tiny_clip(tmp_path):
    """(config path, weights path, model) of a random open_clip model saved to local files."""
    open_clip = pytest.importorskip("open_clip")
    config = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                                              "head_width": 16},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1}}
    path = tmp_path / "tiny-clip-test.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(str(path))
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("tiny-clip-test", pretrained=None)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    return path, tmp_path / "weights.pt", model.eval(), preprocess, open_clip.get_tokenizer("tiny-clip-test")


def test_clip_score_from_local_open_clip(tiny_clip, tmp_path):
    from dllm.image.rewards import clip_score

    path, weights, model, preprocess, tok = tiny_clip
    images = [Image.fromarray(np.full((32, 32, 3), c, np.uint8)) for c in (0, 200)]
    examples = [{"prompt": "red left, blue right"}, {"prompt": "a white image"}]
    scores = clip_score(images, examples, model=str(path), pretrained=str(weights))
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(i) for i in images]), normalize=True)
        txt = model.encode_text(tok([e["prompt"] for e in examples]), normalize=True)
    assert scores == pytest.approx((img * txt).sum(-1).tolist(), abs=1e-5)
    assert all(-1 <= s <= 1 for s in scores)
    with pytest.raises(ValueError, match="not a local weights file"):
        clip_score(images, examples, model=str(path), pretrained=str(tmp_path / "missing.pt"))


def test_amused_recipe_on_tiny_checkpoint(tiny_clip, tmp_path):
    """configs/mdm_cogrpo_amused.yaml (guidance on, CLIP reward) on a tiny local aMUSEd and a tiny local
    open_clip, with the colour reward added: two rewards through GDPO's reward-decoupled advantages."""
    path, weights = tiny_clip[:2]
    local = save_tiny_amused(tmp_path / "amused", palette_fit_steps=20)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("red left, blue right\ngreen top, yellow bottom\n")
    log = train_mdm.main(["--config", str(ROOT / "configs" / "mdm_cogrpo_amused.yaml"), f"output_dir={tmp_path / 'run'}",
                          f"model.name_or_path={local}", f"data.source={prompts}", "trainer.max_steps=2",
                          "trainer.prompts_per_step=2", "rollout.group_size=2", "model.schedule.steps=3",
                          "trainer.mixed_precision='no'", "model.gradient_checkpointing=false", "algorithm.advantage=gdpo",
                          f"rewards=[{{name: clip_score, params: {{model: {path}, pretrained: {weights}}}}}, "
                          "{name: colour_layout, weight: 0.5}]"])
    last = log.history[-1]
    assert "reward/clip_score/mean" in last and "reward/colour_layout/mean" in last
    assert "schedule/guidance_scale" in last and last["reward/errors"] == 0


def test_train_checkpoint_loads_as_pipeline(tmp_path):
    """A local aMUSEd directory trains through the script; the checkpoint's model/ loads back as an
    AmusedPipeline with the trained schedule policy, and the before/after grid is written."""
    from diffusers import AmusedPipeline

    local = save_tiny_amused(tmp_path / "amused", palette_fit_steps=20)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("red left, blue right\n\ngreen top, yellow bottom\n")
    out = tmp_path / "run"
    log = train_mdm.main(["--config", CONFIG, f"output_dir={out}", f"model.name_or_path={local}", f"data.source={prompts}",
                "trainer.max_steps=2", "trainer.save_every=2", "trainer.prompts_per_step=2", "rollout.group_size=2",
                "model.schedule.steps=3"])
    assert len(log.history) == 2 and "schedule/gamma" in log.history[-1]
    model_dir = out / "checkpoints" / "step_000002" / "model"
    pipe = AmusedPipeline.from_pretrained(str(model_dir))
    cfg = load_config(CONFIG)
    cfg.model.name_or_path = str(model_dir)
    policy, _ = dllm.image.build(cfg)
    saved = json.loads((model_dir / "schedule_policy.json").read_text())
    assert policy.schedule.mean.tolist() == pytest.approx(saved["mean"])
    trained = {k: v for k, v in pipe.transformer.state_dict().items()}
    assert all(torch.equal(trained[k], v) for k, v in policy.transformer.state_dict().items())
    assert Image.open(out / "samples_before_after.png").size[0] > 0


def test_config_errors_name_the_field():
    cfg = load_config(CONFIG)
    cfg.sft.steps = 10
    with pytest.raises(ValueError, match="sft.steps"):
        dllm.image.check(cfg)
    cfg = load_config(CONFIG)
    cfg.model.schedule.train = "both"
    with pytest.raises(ValueError, match="model.schedule.train"):
        dllm.image.check(cfg)
    cfg = load_config(CONFIG)
    cfg.eval.every = 10
    with pytest.raises(ValueError, match="eval.every"):
        dllm.image.check(cfg)
    with pytest.raises(ValueError, match="model.schedule.init"):
        SchedulePolicy({"gamma": 1.0}, 0.2)


MIN_RISE_40 = 0.05  # these 40 steps (seed 0) measured 0.133 -> 0.211 (0.227 with OMP_NUM_THREADS=1); 200 steps: README


@pytest.mark.slow
def test_tiny_demo_raises_the_reward_and_moves_the_schedule(tmp_path):
    """The shipped demo's first 40 steps: the colour reward rises between the first and last 20% of
    the steps, and the schedule policy's sample temperature falls."""
    log = train_mdm.main(["--config", CONFIG, f"output_dir={tmp_path}", "trainer.max_steps=40", "trainer.save_every=0",
                          "trainer.log_every=1000"])
    rewards = [r["reward/colour_layout/mean"] for r in log.history]
    first, last = np.mean(rewards[:8]), np.mean(rewards[-8:])
    assert last - first >= MIN_RISE_40, (first, last)
    start, end = log.history[0], log.history[-1]
    assert end["schedule/sample_temperature"] < start["schedule/sample_temperature"] - 0.05
    grid = Image.open(tmp_path / "samples_before_after.png")
    assert grid.size[1] == 2 * 4 * (32 * 4 + 2)  # before and after rows for each of the 4 prompts (two alike)


def test_synthetic_image_prompts_use_the_reward_palette():
    from dllm.image.models import PALETTE
    from mmrl.data.synthetic import IMAGE_COLOURS, generate

    assert list(IMAGE_COLOURS) == list(PALETTE)
    rows = generate("colour_layout", 20, 3, 0)
    assert all(len(layout_clauses(r["question"])) == 2 for r in rows)
    assert {r["question"] for r in generate("colour_fill", 30, 2, 0)} == {"a red image", "a green image"}


def test_resume_continues_exactly(tmp_path):
    """Checkpoints hold the schedule policy (inside the trained module), the optimizer of both parameter
    groups and the RNG the trajectories are drawn from: a resumed run repeats the uninterrupted one."""
    fast = ["trainer.prompts_per_step=2", "rollout.group_size=3", "model.schedule.steps=3", "trainer.save_every=2",
            "trainer.log_every=1000"]
    full = train_mdm.main(["--config", CONFIG, f"output_dir={tmp_path / 'a'}", "trainer.max_steps=4", *fast])
    train_mdm.main(["--config", CONFIG, f"output_dir={tmp_path / 'b'}", "trainer.max_steps=2", *fast])
    resumed = train_mdm.main(["--config", CONFIG, f"output_dir={tmp_path / 'b'}", "trainer.max_steps=4",
                              "resume_from=latest", *fast])
    keys = ("loss/total", "reward/mean", "optim/grad_norm", "schedule/gamma")
    assert [[r[k] for k in keys] for r in resumed.history] == [[r[k] for k in keys] for r in full.history]
    assert len(full.history) == 4
