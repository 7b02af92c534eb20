"""Vision-language adapter: Qwen2-VL / Qwen2.5-VL / Qwen3-VL (any AutoModelForImageTextToText with an
AutoProcessor of the Qwen-VL kind) on chat prompts with images (and, through video.VideoAdapter, videos).

Images go through qwen_vl_utils.fetch_image (the resizing the Qwen-VL models were trained with,
bounded by `min_pixels` / `max_pixels`) and the processor once per prompt; the G completions of a
group share that prompt's processed pixels, and the vision tower encodes them once per group, its
outputs repeated per completion (`share_vision`, passed to the model as `mm_encoder_outputs`), in
generation and in scoring: the same samples and gradients as encoding every row (tested). The
processor's flat `pixel_values` [patches, D] / `image_grid_thw` [images, 3] (and the `_videos` /
`video_grid_thw` / `second_per_grid_ts` of videos) are stored per row (zero padded) in
`batch.extras`, so micro-batching and re-padding keep working, and joined back for each forward.
3-D rope positions need `mm_token_type_ids`, rebuilt from the token ids at every forward.
"""
from __future__ import annotations

import inspect

import torch

from mmrl.core.adapter import (LogProbsFromLogits, group_sizes, sampled_completions, sampling_kwargs,
                               shared_prompt_cache, tokenized_completions)
from mmrl.core.batch import RolloutBatch, group_starts
from mmrl.vlm.data import image_examples
from mmrl.core.prefix import (first_kept, model_attention_mask, pack_groups, shares_prefixes, unpack_logits,
                              worth_packing)


# Per kind of visual input: the processor's pixel and grid keys, and the per-row counts kept in extras.
VISION_KINDS = {
    "image": ("pixel_values", "image_grid_thw", "num_patches", "num_images"),
    "video": ("pixel_values_videos", "video_grid_thw", "num_video_patches", "num_videos"),
}


def rows_of_vision(pixel_values: torch.Tensor, grid_thw: torch.Tensor, per_row: list[int], kind: str = "image",
                   seconds: torch.Tensor | None = None) -> dict:
    """Processor outputs for several prompts -> per-prompt tensors with a leading row dimension.
    Images: pixel_values [R, P_max, D] (+ num_patches [R]) and image_grid_thw [R, I_max, 3] (+ num_images
    [R]); videos the same under the video keys, plus Qwen2.5-VL's `second_per_grid_ts` [R, V_max]."""
    pixels_key, grid_key, patches_key, count_key = VISION_KINDS[kind]
    patches = grid_thw.prod(-1)
    grid_chunks = grid_thw.split(per_row)
    patch_counts = [int(c.sum()) for c in patches.split(per_row)]
    pixel_chunks = pixel_values.split(patch_counts)
    rows = len(per_row)
    pv = pixel_values.new_zeros(rows, max(patch_counts), pixel_values.shape[-1])
    thw = grid_thw.new_zeros(rows, max(per_row), 3)
    for r in range(rows):
        pv[r, :patch_counts[r]] = pixel_chunks[r]
        thw[r, :per_row[r]] = grid_chunks[r]
    out = {pixels_key: pv, patches_key: torch.tensor(patch_counts), grid_key: thw, count_key: torch.tensor(per_row)}
    if seconds is not None:
        per_video = seconds.new_zeros(rows, max(per_row))
        for r, chunk in enumerate(seconds.split(per_row)):
            per_video[r, :len(chunk)] = chunk
        out["second_per_grid_ts"] = per_video
    return out


def join_vision(extras: dict) -> dict:
    """Inverse of rows_of_vision for the rows present: the flat tensors the model's forward takes."""
    out = {}
    for kind, (pixels_key, grid_key, patches_key, count_key) in VISION_KINDS.items():
        if pixels_key not in extras or int(extras[count_key].sum()) == 0:
            continue
        n_patch, n_item = extras[patches_key].tolist(), extras[count_key].tolist()
        out[pixels_key] = torch.cat([extras[pixels_key][r, :n] for r, n in enumerate(n_patch)])
        out[grid_key] = torch.cat([extras[grid_key][r, :n] for r, n in enumerate(n_item)])
        if kind == "video" and "second_per_grid_ts" in extras:
            out["second_per_grid_ts"] = torch.cat([extras["second_per_grid_ts"][r, :n] for r, n in enumerate(n_item)])
    return out


def encode_vision_once_per_group(model, extras: dict, group_ids: torch.Tensor, device) -> dict:
    """Vision-tower outputs for the rows of a batch, computed once per group (the G completions of a
    prompt share its pixels) and repeated per row, in the `mm_encoder_outputs` form ({"image": ...,
    "video": ...}) the Qwen-VL forwards take instead of pixel values. Gradients reach the tower once
    per group, summed over its rows, exactly as G separate encodings would give."""
    starts = group_starts(group_ids.cpu())
    sizes = torch.diff(torch.cat([starts, torch.tensor([len(group_ids)])])).tolist()
    unique = join_vision({k: v[starts.to(v.device)] for k, v in extras.items()})
    encoders = {"image": model.get_image_features, "video": model.get_video_features}
    outputs = {}
    for kind, (pixels_key, grid_key, _, count_key) in VISION_KINDS.items():
        if pixels_key not in unique:
            continue
        out = encoders[kind](unique[pixels_key].to(device), unique[grid_key].to(device), return_dict=True)
        per_row = extras[count_key][starts.to(extras[count_key].device)].tolist()

        def expand(per_item: tuple, per_row=per_row) -> tuple:
            rows, k = [], 0
            for n_item, size in zip(per_row, sizes):
                rows += list(per_item[k:k + n_item]) * size
                k += n_item
            return tuple(rows)

        out.pooler_output = expand(out.pooler_output)
        if getattr(out, "deepstack_features", None) is not None:  # Qwen3-VL: per-layer features
            out.deepstack_features = [expand(level) for level in out.deepstack_features]
        outputs[kind] = out
    return outputs


class VLMAdapter(LogProbsFromLogits):
    """Prompts are left padded, completions right padded; log-probs at the sampling temperature."""

    def __init__(self, processor, min_pixels: int = 3136, max_pixels: int = 501_760, logprob_chunk_rows: int = 4,
                 temperature: float = 1.0, share_vision: bool = True, prefix_sharing: bool = False,
                 prompt_cache: bool = True):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.patch_size = getattr(processor.image_processor, "patch_size", 14)
        self.logprob_chunk_rows = logprob_chunk_rows
        self.temperature = temperature
        self.share_vision = share_vision  # one vision-tower pass per group (generate and score), not per row
        self.prefix_sharing = prefix_sharing  # scoring: one packed row per group (mmrl.core.prefix)
        self.prompt_cache = prompt_cache  # generation: each group's prompt prefilled once, its KV cache shared
        eos = self.tokenizer.eos_token_id
        self.eos_token_ids = [eos] if isinstance(eos, int) else list(eos)
        ids = self.tokenizer.convert_tokens_to_ids
        self.image_token_id, self.video_token_id = ids("<|image_pad|>"), ids("<|video_pad|>")
        # Vision placeholders are never sampled: the model would look for pixels to put there.
        self.suppressed = [self.image_token_id, self.video_token_id,
                           ids("<|vision_start|>"), ids("<|vision_end|>")]

    # ------------------------------------------------------------------ prompts
    def vision_elements(self, example: dict) -> list[dict]:
        """The image / video entries of an example's messages, in order."""
        return [c for m in example["prompt"] if isinstance(m["content"], list) for c in m["content"]
                if isinstance(c, dict) and c.get("type") in ("image", "video")]

    def load_vision(self, example: dict) -> tuple[list, list]:
        """(resized PIL images, videos) of one example. Images go through qwen_vl_utils.fetch_image
        within [min_pixels, max_pixels]; videos need the video adapter (video.VideoAdapter)."""
        from qwen_vl_utils import fetch_image

        elements = self.vision_elements(example)
        if any(e["type"] == "video" for e in elements):
            raise ValueError("this example has a video: train it with model.modality: video "
                             "(scripts/train_video.py), whose adapter decodes frames")
        return [fetch_image(dict(e, min_pixels=self.min_pixels, max_pixels=self.max_pixels), self.patch_size)
                for e in elements], []

    def prepare(self, example: dict):
        """(chat text, resized PIL images, videos) of one example's `prompt` messages."""
        images, videos = self.load_vision(example)
        text = self.processor.apply_chat_template(example["prompt"], tokenize=False, add_generation_prompt=True)
        return text, images, videos

    def _encode_prompts(self, examples: list[dict]):
        prepared = [self.prepare(e) for e in examples]
        images = [im for _, ims, _ in prepared for im in ims]
        videos = [v for _, _, vids in prepared for v in vids]
        video_kwargs = {}
        if videos:  # frames already sampled and sized (video.frames): the processor only patches them
            video_kwargs = dict(videos=[v.frames for v in videos], video_metadata=[v.metadata for v in videos],
                                do_sample_frames=False, do_resize=False, cap_pixels_per_frame=True)
        enc = self.processor(text=[t for t, _, _ in prepared], images=images or None, padding=True,
                             return_tensors="pt", **video_kwargs)
        extras = {}
        if images:
            extras.update(rows_of_vision(enc["pixel_values"], enc["image_grid_thw"], [len(ims) for _, ims, _ in prepared]))
        if videos:
            extras.update(rows_of_vision(enc["pixel_values_videos"], enc["video_grid_thw"],
                                         [len(vids) for _, _, vids in prepared], kind="video",
                                         seconds=enc.get("second_per_grid_ts")))
        return enc["input_ids"], enc["attention_mask"], extras

    def mm_token_type_ids(self, input_ids: torch.Tensor, prompt_length: int) -> torch.Tensor:
        """0 text, 1 image, 2 video: what Qwen-VL's 3-D rope index needs (without it, 1-D positions).
        Only prompt positions can hold vision inputs; a sampled <|image_pad|> in a completion is text."""
        types = (input_ids == self.image_token_id).long() + 2 * (input_ids == self.video_token_id).long()
        types[:, prompt_length:] = 0
        return types

    def _model_inputs(self, model, input_ids, attention_mask, extras: dict, group_ids: torch.Tensor, device,
                      prompt_length: int) -> dict:
        """Forward / generate inputs; with `share_vision` and groups of several rows, the pixels are
        replaced by vision-tower outputs computed once per group."""
        vision = {k: v.to(device) for k, v in join_vision(extras).items()}
        inputs = dict(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                      mm_token_type_ids=self.mm_token_type_ids(input_ids, prompt_length).to(device), **vision)
        pixel_keys = [kind[0] for kind in VISION_KINDS.values() if kind[0] in inputs]
        if self.share_vision and pixel_keys and shares_prefixes(group_ids):
            for key in pixel_keys:
                inputs.pop(key)
            bare = model.module if hasattr(model, "module") else model  # DDP: the wrapped model's methods
            inputs["mm_encoder_outputs"] = encode_vision_once_per_group(bare, extras, group_ids, device)
        return inputs

    # ------------------------------------------------------------------ rollout
    @torch.no_grad()
    def generate(self, model, examples: list[dict], group_size: int | list[int], rollout_cfg) -> RolloutBatch:
        sizes = group_sizes(group_size, len(examples))
        was_training = model.training
        model.eval()
        prompt_ids, prompt_mask, extras, inputs = self.generation_inputs(model, examples, sizes)
        out = model.generate(**inputs, **sampling_kwargs(rollout_cfg), pad_token_id=self.tokenizer.pad_token_id,
                             eos_token_id=self.eos_token_ids, suppress_tokens=self.suppressed, use_cache=True)
        model.train(was_training)
        group_ids = torch.arange(len(examples)).repeat_interleave(sizes)
        completion_ids, completion_mask, texts = sampled_completions(out, prompt_ids.shape[1], self.tokenizer,
                                                                     self.eos_token_ids)
        return RolloutBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
                            completion_mask=completion_mask, group_ids=group_ids, extras=extras,
                            examples=[e for e, k in zip(examples, sizes.tolist()) for _ in range(k)],
                            completions_text=texts)

    def generation_inputs(self, model, examples: list[dict], sizes: torch.Tensor):
        """(prompt ids, mask and extras of every row, the `generate` inputs). With `prompt_cache` and a
        group of several rows, each group's prompt but its last token (its text, images, videos and 3-D
        rope positions) is prefilled once and the KV cache repeated for its rows, so `generate` prefills
        one token per row; otherwise every row's prompt is prefilled (its vision encoded once per group
        with `share_vision`)."""
        unique_ids, unique_mask, unique_extras = self._encode_prompts(examples)
        prompt_ids, prompt_mask = unique_ids.repeat_interleave(sizes, 0), unique_mask.repeat_interleave(sizes, 0)
        extras = {k: v.repeat_interleave(sizes, 0) for k, v in unique_extras.items()}
        device = next(model.parameters()).device
        if self.prompt_cache and bool((sizes > 1).any()):
            cache = self._shared_prompt_cache(model, unique_ids, unique_mask, unique_extras, sizes, device)
            inputs = dict(input_ids=prompt_ids.to(device), attention_mask=prompt_mask.to(device), cache=cache)
        else:
            group_ids = torch.arange(len(examples)).repeat_interleave(sizes)
            inputs = self._model_inputs(model, prompt_ids, prompt_mask, extras, group_ids, device, prompt_ids.shape[1])
        return prompt_ids, prompt_mask, extras, inputs

    def _shared_prompt_cache(self, model, prompt_ids, prompt_mask, extras: dict, sizes: torch.Tensor, device):
        """The KV cache of every group's prompt without its last token (a text token of the chat template's
        generation prompt: left padding keeps the last column real), computed once per group, repeated
        for the group's rows. The model's forward stores the rows' rope offsets (`rope_deltas`: 3-D rope
        positions run ahead of the token count after images / videos); they are repeated too, which is
        what `generate` reads to place each row's next tokens."""
        ids, mask = prompt_ids[:, :-1], prompt_mask[:, :-1]
        inputs = self._model_inputs(model, ids, mask, extras, torch.arange(len(sizes)), device, ids.shape[1])
        rope = next(m for m in model.modules() if hasattr(m, "rope_deltas"))
        rope.rope_deltas = None  # computed afresh from this prefill (cache length 0)
        cache, rows = shared_prompt_cache(model, inputs, sizes)
        rope.rope_deltas = rope.rope_deltas[rows.to(rope.rope_deltas.device)]
        return cache

    def encode(self, examples: list[dict], completions: list[str]) -> RolloutBatch:
        prompt_ids, prompt_mask, extras = self._encode_prompts(examples)
        completion_ids, completion_mask = tokenized_completions(self.tokenizer, completions, self.eos_token_ids[0])
        return RolloutBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
                            completion_mask=completion_mask, group_ids=torch.arange(len(examples)), extras=extras,
                            examples=list(examples), completions_text=list(completions))

    # ------------------------------------------------------------------ scoring
    def completion_logits(self, model, batch: RolloutBatch) -> torch.Tensor:
        """[N, C, V] logits predicting each completion token, at the sampling temperature; with
        `prefix_sharing`, each group's prompt (and its images / videos) goes through the model once."""
        input_ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)
        attention_mask = torch.cat([batch.prompt_mask, batch.completion_mask], dim=1)
        n_completion = batch.completion_ids.shape[1]
        if self.prefix_sharing and worth_packing(batch, model):
            return self.at_temperature(self._shared_prefix_logits(model, batch, input_ids, attention_mask))
        inputs = self._model_inputs(model, input_ids, attention_mask, batch.extras, batch.group_ids,
                                    batch.prompt_ids.device, batch.prompt_ids.shape[1])
        logits = model(**inputs, logits_to_keep=n_completion + 1, use_cache=False).logits[:, :-1]
        return self.at_temperature(logits)

    def _shared_prefix_logits(self, model, batch: RolloutBatch, input_ids, attention_mask) -> torch.Tensor:
        """mmrl.core.prefix's packed forward with Qwen-VL's 3-D rope positions: the positions of every
        plain row come from the model's own `get_rope_index`, and each packed row takes its prompt's
        from the group's first row and each completion's from that completion's row."""
        device, width = batch.prompt_ids.device, batch.prompt_ids.shape[1]
        bare = model.module if hasattr(model, "module") else model
        rope = next(m for m in bare.modules() if hasattr(m, "get_rope_index"))
        types = self.mm_token_type_ids(input_ids, width).to(device)
        accepted = inspect.signature(rope.get_rope_index).parameters  # grids (+ Qwen2.5-VL's seconds), not pixels
        grids = {k: v.to(device) for k, v in join_vision(batch.extras).items() if k in accepted}
        positions, _ = rope.get_rope_index(input_ids.to(device), mm_token_type_ids=types,
                                           attention_mask=attention_mask.to(device), **grids)
        packed = pack_groups(batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask,
                             batch.group_ids, pad_id=self.tokenizer.pad_token_id)
        prompt_vision = join_vision({k: v[packed.prompt_rows.to(v.device)] for k, v in batch.extras.items()})
        offset = first_kept(packed)
        logits = model(input_ids=packed.input_ids.to(device), attention_mask=model_attention_mask(packed, model),
                       position_ids=packed.pack(positions), mm_token_type_ids=packed.pack(types),
                       **{k: v.to(device) for k, v in prompt_vision.items()},
                       logits_to_keep=packed.length - offset, use_cache=False).logits
        return unpack_logits(logits, packed, offset)

    image_examples = staticmethod(image_examples)  # an evaluation benchmark's rows with images -> (prompts, skipped)

    def save_pretrained(self, directory) -> None:
        self.processor.save_pretrained(directory)
