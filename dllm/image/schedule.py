"""Co-GRPO's inference schedule as a policy (Co-GRPO, "Co-Optimizing Generation and Inference Schedules
for Masked Diffusion Models", Tsinghua LeapLab, arXiv 2512.22288).

The paper casts masked image generation as one MDP whose action at every step is the visual tokens
*and* the schedule settings that are normally fixed functions of the step: the re-mask ratio, the
sample temperature, the re-mask temperature and the guidance scale. A scheduling policy pi_phi over
those settings is trained, in alternation with the token policy pi_theta, by trajectory-level GRPO.
How pi_phi is parameterised is not public; this module is our own design, kept small:

- per trajectory, an unconstrained vector z ~ N(mu, diag(sigma^2)) with learnable mu and log sigma
  (one dimension per knob, `SCHEDULE_KNOBS`); log pi_phi(z) is its Gaussian log-density;
- z maps to the settings of all K steps through the shapes aMUSEd (diffusers `AmusedScheduler` and
  `AmusedPipeline`) uses, so z = 0 log-defaults reproduce the stock sampler:
    gamma = exp(z_gamma):       the fraction still masked after step k is cos(pi/2 ((k+1)/K)^gamma)
                                (gamma = 1: aMUSEd's cosine schedule; < 1 commits more tokens early);
    tau = exp(z_tau):           the sample temperature of every step (tokens ~ softmax(logits / tau));
    rho0 = exp(z_rho):          the re-mask (Gumbel) temperature, linspace(rho0, 0, K) over the steps
                                (aMUSEd's pipeline default is (2, 0));
    s = exp(z_s):               the guidance scale, logits = un + s (cond - un) (only with guidance on).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers.schedulers.scheduling_amused import mask_by_random_topk

SCHEDULE_KNOBS = ("gamma", "sample_temperature", "remask_temperature", "guidance_scale")


class SchedulePolicy(torch.nn.Module):
    """Per-trajectory Gaussian over the schedule vector z (see module docstring)."""

    def __init__(self, init: dict[str, float], init_std: float = 0.2, guidance: bool = False):
        super().__init__()
        self.knobs = SCHEDULE_KNOBS if guidance else SCHEDULE_KNOBS[:3]
        missing = [k for k in self.knobs if k not in init or init[k] <= 0]
        if missing:
            raise ValueError(f"model.schedule.init needs a positive value for {missing}")
        if init_std <= 0:
            raise ValueError(f"model.schedule.init_std must be > 0, got {init_std}")
        self.mean = torch.nn.Parameter(torch.tensor([math.log(init[k]) for k in self.knobs]))
        self.log_std = torch.nn.Parameter(torch.full((len(self.knobs),), math.log(init_std)))

    def sample(self, rows: int, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(rows, len(self.knobs), generator=generator).to(self.mean.device)
        return (self.mean + self.log_std.exp() * noise).detach()

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """[N] log-density of the rows of z under the current parameters."""
        dist = torch.distributions.Normal(self.mean, self.log_std.exp())
        return dist.log_prob(z).sum(-1)

    def entropy(self) -> torch.Tensor:
        return torch.distributions.Normal(self.mean, self.log_std.exp()).entropy().sum()

    def settings(self) -> dict[str, float]:
        """exp(mean) per knob: the schedule at the policy's mode (for logs)."""
        return {k: float(v) for k, v in zip(self.knobs, self.mean.detach().exp().tolist())}


@dataclass
class Schedule:
    """The per-step settings of N trajectories: remaining [N, K] (tokens still masked after step k,
    before clamping to the sampler's progress rule), sample_temperature [N], remask_temperature
    [N, K], guidance_scale [N] (None without guidance)."""

    remaining: torch.Tensor
    sample_temperature: torch.Tensor
    remask_temperature: torch.Tensor
    guidance_scale: torch.Tensor | None


def schedule_from(z: torch.Tensor, knobs: tuple[str, ...], steps: int, num_tokens: int) -> Schedule:
    """The settings of K = `steps` steps for N trajectories from their schedule vectors z [N, D]."""
    if steps < 2:
        raise ValueError(f"model.schedule.steps must be >= 2, got {steps}")
    values = dict(zip(knobs, z.float().exp().unbind(-1)))
    progress = torch.arange(1, steps + 1, dtype=torch.float32, device=z.device) / steps
    ratio = torch.cos(math.pi / 2 * progress[None, :] ** values["gamma"][:, None])
    remaining = torch.floor(num_tokens * ratio).long()
    remaining[:, -1] = 0
    fall = torch.linspace(1.0, 0.0, steps, device=z.device)
    return Schedule(remaining=remaining, sample_temperature=values["sample_temperature"],
                    remask_temperature=values["remask_temperature"][:, None] * fall[None, :],
                    guidance_scale=values.get("guidance_scale"))


def scheduled_step(logits: torch.Tensor, sample: torch.Tensor, remaining: torch.Tensor, sample_temperature: torch.Tensor,
                   remask_temperature: torch.Tensor, mask_token_id: int, last: bool,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """One step of aMUSEd's sampler (diffusers `AmusedScheduler.step`) with per-row settings.

    logits [N, L, V] (already guided), sample [N, L] with `mask_token_id` at unknown positions,
    remaining [N] tokens to leave masked, sample_temperature [N], remask_temperature [N].
    Every unknown position draws x0 ~ softmax(logits / tau); the confidence is the log-probability of
    the draw plus rho * Gumbel noise, known tokens rank first; all but the `remaining` least confident
    positions are committed. As in the stock step, `remaining` is clamped to [1, unknown - 1] (each
    step commits at least one token and leaves one for the next), and the last step commits all.
    With tau = 1 and a shared rho this draws the same random numbers, in the same order, as
    `AmusedScheduler.step`, and returns the same sample."""
    unknown = sample == mask_token_id
    probs = torch.softmax(logits.float() / sample_temperature[:, None, None], dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    flat = flat.to(generator.device) if generator is not None else flat
    draw = torch.multinomial(flat, 1, generator=generator).to(sample.device).view(sample.shape)
    x0 = torch.where(unknown, draw, sample)
    if last:
        return x0
    keep_masked = torch.minimum(unknown.sum(-1) - 1, remaining).clamp(min=1)
    chosen = probs.gather(-1, x0[..., None])[..., 0]
    chosen = torch.where(unknown, chosen, torch.finfo(chosen.dtype).max)
    remask = mask_by_random_topk(keep_masked[:, None], chosen, remask_temperature[:, None], generator)
    return torch.where(remask, mask_token_id, x0)
