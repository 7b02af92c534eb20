"""Masked image generators: diffusers' aMUSEd (UVit2DModel + VQModel + CLIP text encoder + AmusedScheduler)
loaded from a local directory, a tiny aMUSEd-shaped one built here for tests and demos, and the policy
module Co-GRPO trains (the token model plus the schedule policy of dllm.image.schedule).

The tiny model's VQ decoder is random except that it is fitted, for a few seconds at build time, to
paint each codebook entry as one colour of `PALETTE` (a random decoder paints every code the same
grey), so a verifiable colour reward on decoded pixels means something. Its transformer and text
encoder stay random.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from dllm.image.schedule import schedule_from

SCHEDULE_FILE = "schedule_policy.json"
_FITTED_DECODERS: dict[tuple, dict] = {}

# Named colours (RGB in [0, 1]) of the tiny decoder's codebook entries and of the colour rewards.
PALETTE = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0), "yellow": (1.0, 1.0, 0.0),
           "cyan": (0.0, 1.0, 1.0), "magenta": (1.0, 0.0, 1.0), "white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}


def build_tiny_amused(image_size: int = 32, hidden_size: int = 32, seed: int = 0, palette_fit_steps: int = 300):
    """A random aMUSEd pipeline (8-entry codebook, a 16x16 token grid for 32x32 images) whose VQ
    decoder paints code c as colour c of PALETTE. No downloads."""
    from diffusers import AmusedPipeline, AmusedScheduler, UVit2DModel, VQModel
    from tokenizers import processors
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from mmrl.models.tiny import build_tokenizer

    codebook = len(PALETTE)
    words = [f"{a} {p}, {b} {q}" for a in PALETTE for b in PALETTE for p, q in (("left", "right"), ("top", "bottom"))]
    words += [f"a {a} image" for a in PALETTE]
    tokenizer = build_tokenizer(extra_corpus=words)
    tokenizer.model_max_length = 16
    tokenizer.padding_side = "right"
    # as CLIP's tokenizer: every prompt ends in the end-of-text token, which is also the padding, and the
    # text encoder pools the hidden state at its first occurrence (so the pooled embedding sees the prompt)
    end = tokenizer.pad_token
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {end}", special_tokens=[(end, tokenizer.pad_token_id)])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        transformer = UVit2DModel(
            hidden_size=hidden_size, use_bias=False, hidden_dropout=0.0, cond_embed_dim=hidden_size,
            micro_cond_encode_dim=2, micro_cond_embed_dim=10, encoder_hidden_size=hidden_size,
            vocab_size=codebook + 1, codebook_size=codebook, in_channels=16, block_out_channels=hidden_size,
            num_res_blocks=1, downsample=True, upsample=True, block_num_heads=1, num_hidden_layers=1,
            num_attention_heads=2, attention_dropout=0.0, intermediate_size=hidden_size, layer_norm_eps=1e-6,
            ln_elementwise_affine=True)
        vqvae = VQModel(act_fn="silu", block_out_channels=[16, 16], down_block_types=["DownEncoderBlock2D"] * 2,
                        in_channels=3, latent_channels=8, layers_per_block=1, norm_num_groups=8,
                        num_vq_embeddings=codebook, out_channels=3, sample_size=image_size,
                        up_block_types=["UpDecoderBlock2D"] * 2, mid_block_add_attention=False,
                        lookup_from_codebook=True, force_upcast=True)
        text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
            num_attention_heads=2, num_hidden_layers=1, projection_dim=hidden_size,
            max_position_embeddings=tokenizer.model_max_length, bos_token_id=0,
            eos_token_id=tokenizer.pad_token_id, pad_token_id=tokenizer.pad_token_id))
        key = (image_size, seed, palette_fit_steps)
        if key not in _FITTED_DECODERS:  # deterministic: fit once per process
            fit_palette_decoder(vqvae, grid=image_size // 2, steps=palette_fit_steps)
            _FITTED_DECODERS[key] = {k: v.clone() for k, v in vqvae.state_dict().items()}
        vqvae.load_state_dict(_FITTED_DECODERS[key])
    return AmusedPipeline(vqvae=vqvae, tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer,
                          scheduler=AmusedScheduler(mask_token_id=codebook))


def fit_palette_decoder(vqvae, grid: int, steps: int, batch: int = 16) -> float:
    """Fit the decoder (and codebook) so code c decodes to PALETTE colour c, on random two-part
    layouts with scattered codes; returns the final mean squared error (pixels in [-1, 1])."""
    colours = torch.tensor(list(PALETTE.values())) * 2 - 1
    params = [*vqvae.post_quant_conv.parameters(), *vqvae.decoder.parameters(), *vqvae.quantize.parameters()]
    optimizer = torch.optim.Adam(params, lr=3e-3)
    scale = 2 ** (len(vqvae.config.block_out_channels) - 1)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        first, second = (torch.randint(0, len(colours), (batch, 1, 1)) for _ in range(2))
        ids = torch.where(torch.arange(grid)[None, :, None] < grid // 2, first, second).expand(batch, grid, grid).clone()
        scatter = torch.rand(batch, grid, grid) < 0.3
        ids[scatter] = torch.randint(0, len(colours), (int(scatter.sum()),))
        image = decode_tokens(vqvae, ids)
        target = colours[ids].permute(0, 3, 1, 2).repeat_interleave(scale, 2).repeat_interleave(scale, 3)
        loss = ((image - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def decode_tokens(vqvae, ids: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] images in [-1, 1] (unclamped) of token grids ids [N, h, w]."""
    n, h, w = ids.shape
    return vqvae.decode(ids, force_not_quantize=True,
                        shape=(n, h, w, vqvae.config.latent_channels)).sample


def save_tiny_amused(directory: str | Path, **kwargs) -> Path:
    """Write a tiny aMUSEd pipeline to `directory` (a stand-in for a downloaded amused-256 / -512)."""
    directory = Path(directory)
    build_tiny_amused(**kwargs).save_pretrained(directory)
    return directory


def load_amused(model_cfg, seed: int = 0):
    """An AmusedPipeline from `model_cfg.name_or_path`: 'tiny' (built here) or a local directory
    written by `AmusedPipeline.save_pretrained` (amused-256 / amused-512, or an mmrl checkpoint's model/)."""
    from diffusers import AmusedPipeline

    from mmrl.models.loading import torch_dtype

    if model_cfg.name_or_path == "tiny":
        t = model_cfg.tiny
        pipe = build_tiny_amused(hidden_size=t.hidden_size, seed=seed)
    else:
        path = Path(model_cfg.name_or_path)
        if not (path / "model_index.json").exists():
            raise ValueError(f"model.name_or_path '{path}' is not a local diffusers pipeline directory "
                             "(no model_index.json; mmrl does not download): save aMUSEd with "
                             "AmusedPipeline.save_pretrained and point here")
        pipe = AmusedPipeline.from_pretrained(str(path))
    pipe.transformer.to(torch_dtype(model_cfg.dtype))
    for frozen in (pipe.text_encoder, pipe.vqvae):
        frozen.requires_grad_(False).eval()
    return pipe


class CoGRPOPolicy(torch.nn.Module):
    """The two policies Co-GRPO trains, as one module (one optimizer, one DDP wrapper): `transformer`
    (pi_theta over tokens) and `schedule` (pi_phi over schedule vectors). `forward` scores stored
    trajectories: the log-probability of each image token at the step it was committed, and of each
    trajectory's schedule vector, as [N, L + 1] (last column: the schedule)."""

    def __init__(self, transformer, schedule, schedule_lr: float | None = None):
        super().__init__()
        self.transformer = transformer
        self.schedule = schedule
        self.schedule_lr = schedule_lr

    def optimizer_groups(self, lr: float) -> list[dict]:
        """AdamW parameter groups: the transformer at `lr`, the schedule policy at `schedule_lr`
        (default `lr`): a handful of parameters that Adam moves by about lr per step."""
        return [{"params": [p for p in self.transformer.parameters() if p.requires_grad], "lr": lr},
                {"params": list(self.schedule.parameters()), "lr": self.schedule_lr or lr}]

    def step_logits(self, sample: torch.Tensor, text: dict, guidance_scale: torch.Tensor | None) -> torch.Tensor:
        """[N, L, V] logits at token grid sample [N, h, w], guided as un + s (cond - un) when `text`
        has the unconditional embeddings."""
        n = sample.shape[0]
        if guidance_scale is None:
            out = self.transformer(sample, micro_conds=text["micro_conds"], pooled_text_emb=text["pooled"],
                                   encoder_hidden_states=text["hidden"])
        else:
            both = self.transformer(torch.cat([sample, sample]), micro_conds=torch.cat([text["micro_conds"]] * 2),
                                    pooled_text_emb=torch.cat([text["uncond_pooled"], text["pooled"]]),
                                    encoder_hidden_states=torch.cat([text["uncond_hidden"], text["hidden"]]))
            uncond, cond = both.float().chunk(2)
            out = uncond + guidance_scale.to(uncond)[:, None, None, None] * (cond - uncond)
        return out.reshape(n, out.shape[1], -1).transpose(1, 2)

    def forward(self, states: torch.Tensor, commit_step: torch.Tensor, tokens: torch.Tensor, z: torch.Tensor,
                text: dict, with_entropy: bool = False):
        n, steps, length = states.shape
        side = int(round(length ** 0.5))
        plan = schedule_from(z, self.schedule.knobs, steps, length)
        logp = torch.zeros(n, length, device=tokens.device)
        entropy = torch.zeros(n, length + 1, device=tokens.device)
        for k in range(steps):
            committed = commit_step == k
            if not committed.any():
                continue
            logits = self.step_logits(states[:, k].view(n, side, side), text, plan.guidance_scale)
            step_logp = torch.log_softmax(logits.float() / plan.sample_temperature[:, None, None], dim=-1)
            picked = step_logp.gather(-1, tokens[..., None])[..., 0]
            logp = torch.where(committed, picked, logp)
            if with_entropy:
                with torch.no_grad():
                    ent = -(step_logp.exp() * step_logp).sum(-1)
                    entropy[:, :length] = torch.where(committed, ent, entropy[:, :length])
        terms = torch.cat([logp, self.schedule.log_prob(z)[:, None]], dim=1)
        if with_entropy:
            entropy[:, length] = self.schedule.entropy().detach()
            return terms, entropy
        return terms

    def save_pretrained(self, directory, state_dict: dict | None = None) -> None:
        directory = Path(directory)
        state_dict = state_dict if state_dict is not None else self.state_dict()
        sub = {k.split(".", 1)[1]: v.contiguous() for k, v in state_dict.items() if k.startswith("transformer.")}
        # diffusers' save_pretrained reads the module's own (under FSDP2 sharded) state: write the given one
        from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
        from safetensors.torch import save_file

        (directory / "transformer").mkdir(parents=True, exist_ok=True)
        self.transformer.save_config(directory / "transformer")
        save_file(sub, directory / "transformer" / SAFETENSORS_WEIGHTS_NAME, metadata={"format": "pt"})
        schedule = {"knobs": list(self.schedule.knobs),
                    "mean": state_dict["schedule.mean"].float().tolist(),
                    "log_std": state_dict["schedule.log_std"].float().tolist()}
        directory.mkdir(parents=True, exist_ok=True)
        (directory / SCHEDULE_FILE).write_text(json.dumps(schedule, indent=1))

    def load_schedule(self, directory) -> bool:
        """Restore the schedule policy saved next to a pipeline (an mmrl checkpoint's model/); False if none."""
        path = Path(directory) / SCHEDULE_FILE
        if not path.exists():
            return False
        saved = json.loads(path.read_text())
        if tuple(saved["knobs"]) != tuple(self.schedule.knobs):
            raise ValueError(f"{path} schedules {saved['knobs']}, the config {list(self.schedule.knobs)}: "
                             "set model.schedule.guidance to match")
        with torch.no_grad():
            self.schedule.mean.copy_(torch.tensor(saved["mean"]))
            self.schedule.log_std.copy_(torch.tensor(saved["log_std"]))
        return True
