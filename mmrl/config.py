"""Run configuration: dataclasses loaded from yaml, overridden by dotted `key=value` arguments.

Unknown keys and wrong types are errors that name the key:
    load_config("configs/tiny_text_grpo.yaml", ["trainer.max_steps=20", "output_dir=/tmp/run"])

The sections here are those every run has. A model family adds its own (its `config_sections`, e.g.
dllm's `model.diffusion` and `inpainting`; mmrl.modalities): a run's schema is `Config` with the
sections of the family its `model.modality` names, so a section of another family is refused by name.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    key: str | None = None  # the unknown key, when that is the error


# ------------------------------------------------------------------ schema
@dataclass
class TinyModelConfig:
    """Shape of the randomly initialised Qwen2-style model used when model.name_or_path == 'tiny'."""
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vocab_size: int = 400
    vision_depth: int = 2  # tiny VLM (model.modality: vlm) vision tower blocks
    vision_hidden_size: int = 32
    vlm_family: str = "qwen2_5_vl"  # tiny VLM classes: qwen2_5_vl | qwen2_vl | qwen3_vl


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class ModelConfig:
    modality: str = "text"  # text | vlm | video | dllm | mdm, or your model family's import path (mmrl/modalities.py)
    name_or_path: str = "tiny"  # a local checkpoint directory, or 'tiny' for a random model built from `tiny`
    dtype: str = "float32"  # float32 | bfloat16 | float16: the dtype the weights are loaded in
    trust_remote_code: bool = False
    attn_implementation: str | None = None  # e.g. sdpa, flash_attention_2
    gradient_checkpointing: bool = False
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class SyntheticConfig:
    """Generated tasks with verifiable answers (see mmrl.data.synthetic)."""
    task: str = "addition"
    num_examples: int = 200
    max_operand: int = 9  # largest operand (addition) or square count (shapes)
    multiple_choice: bool = False  # colours, direction: list the options and answer with a letter
    seed: int = 0
    video_dir: str | None = None  # video tasks: where the generated mp4 files go (default <output_dir>/synthetic_videos)


@dataclass
class DataConfig:
    source: str = "synthetic"  # 'synthetic', a jsonl path, a .txt file (one prompt a line), or 'package:<name>' (shipped with mmrl)
    prompt_field: str = "question"
    answer_field: str = "answer"
    solution_field: str = "solution"  # reference completion for the SFT warm-up
    prompt_template: str = "{question}"  # user message, formatted with the row's fields
    system_prompt: str | None = None
    max_prompt_length: int = 512  # text prompts longer than this (in tokens) are cut from the left
    image_field: str = "images"  # vlm: list of local image paths (or one path in `image`)
    image_root: str | None = None  # vlm: base of relative image paths (default: the jsonl's directory)
    options_field: str = "options"  # multiple-choice options, listed as "A. ..." after the question
    qa_inversion: float = 0.0  # vlm: TW-GRPO question-answer inversion probability (single -> multi-choice)
    video_field: str = "video"  # video: local path of the row's video file
    video_root: str | None = None  # video: base of relative video paths (default: the jsonl's directory)
    video_check: str = "decode"  # video: at load, 'decode' the sampled frames of every video, or only 'open' it
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class RolloutConfig:
    group_size: int = 8
    max_new_tokens: int = 256
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0


@dataclass
class RewardConfig:
    name: str = "accuracy_math"
    weight: float = 1.0
    params: dict = field(default_factory=dict)
    success: bool = False  # this reward is the run's success signal in [0, 1] (prompt samplers, VAS re-scoring, IGPO's correctness); default: the first reward
    on_error: str = "drop"  # a sample the function raises on or scores NaN/inf: drop (its group leaves the update), zero (scored 0 and trained on: teaches the policy to avoid what broke the reward) or raise


@dataclass
class AlgorithmConfig:
    advantage: str = "grpo"
    advantage_params: dict = field(default_factory=dict)  # keyword arguments of the estimator, e.g. {eps: 1e-6}
    loss: str = "grpo"
    loss_params: dict = field(default_factory=dict)  # keyword arguments of the loss, e.g. {eps: 0.2, eps_high: 0.28}
    aggregation: str = "seq-mean-token-mean"
    beta: float = 0.0  # KL weight; > 0 keeps a frozen reference model
    kl_estimator: str = "k3"  # k1 | k2 | k3 (Schulman's estimators of KL(pi || pi_ref))
    kl_penalty: str = "loss"  # loss: beta * KL per token in the loss (DeepSeekMath); reward: r - beta * sum_t KL (verl's use_kl_in_reward)
    kl_clamp: float | None = None  # clamp each KL estimate to [-c, c] (verl clamps k3 at 10); null = no clamp
    num_iterations: int = 1  # mu: policy updates per rollout batch
    token_weighting: str | None = None  # gtpo | entropy_topk (mmrl/core/weighting.py)
    token_weighting_params: dict = field(default_factory=dict)
    llds_coef: float = 0.0  # LLDS likelihood-preserving regulariser weight (0 = off)
    llds_nonneg_advantage: bool = True  # LLDS protects only responses with A >= 0


@dataclass
class SamplerConfig:
    name: str = "uniform"  # uniform | dynamic_filter | vade | spo_priority | knapsack (mmrl/core/samplers.py)
    params: dict = field(default_factory=dict)


@dataclass
class AugmentationConfig:
    """Difficulty-aware augmentation (DeepVideo-R1; mmrl/core/methods/augmentation.py): prompts harder than the
    recent average get a partial reasoning hint, easier ones noisy video frames. The paper does not
    publish the maps from difficulty to hint length and noise level: these linear, capped ones are ours."""
    name: str | None = None  # difficulty | None (off)
    window: int = 100  # replay buffer: the group-mean rewards of the W most recent prompts
    min_gap: float = 0.0  # augment only prompts with |difficulty| > min_gap
    hint_samples: int = 4  # answer-conditioned completions drawn per hard prompt; the best gives the hint
    hint_scale: float = 1.0  # hint = the first min(hint_max, hint_scale * difficulty) of its reasoning's words
    hint_max: float = 0.8
    answer_template: str = "(The correct answer is {answer}.)"  # appended to the question to draw hints
    hint_template: str = "Hint: {hint}"  # appended to the question of a hard prompt
    noise_scale: float = 0.3  # frame noise std (fraction of the pixel range) = min(noise_max, noise_scale * |difficulty|)
    noise_max: float = 0.3


@dataclass
class OptimConfig:
    lr: float = 1e-6
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    scheduler: str = "constant"  # constant | linear | cosine (after warmup)
    warmup_steps: int = 0
    max_grad_norm: float = 1.0


@dataclass
class SFTConfig:
    """Supervised warm-up on the data's reference solutions before RL (0 steps = off)."""
    steps: int = 0
    lr: float = 1e-3
    batch_size: int = 16
    target_template: str = "{solution}"
    thought_dropout: float = 0.0  # TON: probability that a target's <think> content becomes empty ("\n\n")
    sampling: str = "replacement"  # replacement: each batch drawn uniformly; epochs: shuffled passes over the data (as LLaMA-Factory)
    scheduler: str = "constant"  # constant | cosine (to 0 over sft.steps, after the warm-up)
    warmup_ratio: float = 0.0  # linear warm-up over this fraction of sft.steps


@dataclass
class FSDPConfig:
    """Settings of `trainer.sharding: fsdp2` (torch's fully_shard; see mmrl.core.sharding)."""
    reshard_after_forward: bool = True  # free each block's gathered parameters after its forward (ZeRO-3); false: keep them until backward (ZeRO-2, more memory, less communication)
    cpu_offload: bool = False  # GPU runs: keep parameters, gradients and optimizer state on the CPU between uses


@dataclass
class TrainerConfig:
    max_steps: int = 100
    prompts_per_step: int = 8  # global number of prompts per step; each gets rollout.group_size completions
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"  # no | bf16 | fp16 (accelerate autocast; under fsdp2, bf16 compute on model.dtype parameters)
    sharding: str = "none"  # none: DDP (each rank holds the whole model) | fsdp2: parameters, gradients and optimizer state sharded over the processes
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)
    seed: int = 0
    save_every: int = 0  # checkpoint every N steps (0 = only at the end)
    save_total_limit: int = 2
    save_hf_model: bool = True  # also write a from_pretrained-loadable model/ in each checkpoint
    logprob_chunk_rows: int = 4
    prefix_sharing: bool = True  # score each group's prompt once (exact; eager / sdpa attention), and prefill it once in generation (its KV cache shared by the group's rows)
    log_every: int = 1
    log_with: list[str] = field(default_factory=list)  # experiment trackers (accelerate's): tensorboard (<output_dir>/trackers), wandb, trackio, ... several at once
    run_name: str | None = None  # the trackers' run / project name (None: the output_dir's name)
    peak_tflops: float | None = None  # one device's peak TFLOP/s for perf/mfu (None: the table's for A100/H100/H200/B200/L40S/A10G in bf16/fp16; no MFU on CPU)
    max_nonfinite_steps: int = 3  # stop after this many steps in a row whose updates all had a non-finite loss or gradient (each is skipped)
    save_merged_model: bool = False  # LoRA: also write merged/, the base model with the adapter merged in (from_pretrained-loadable without the base)


@dataclass
class BenchmarkConfig:
    """One evaluation benchmark: a shipped one by `name` (gsm8k, math500, aime24, aime25, amc23;
    with images: mathvision, superclevr), or
    any jsonl file through `source`. Unset fields take the shipped benchmark's value, else the default."""
    name: str = "gsm8k"
    source: str | None = None  # jsonl path or 'package:<name>'; None = the shipped benchmark called `name`
    prompt_field: str | None = None  # default: question
    answer_field: str | None = None  # default: answer
    prompt_template: str | None = None  # default: {question}
    reward: str | None = None  # reward function that grades a sample (default: accuracy_math)
    reward_params: dict = field(default_factory=dict)
    images: bool | None = None  # rows carry images (`images` / `image` paths): evaluated by a vlm model
    limit: int = 0  # evaluate only the first N rows (0 = all)
    num_samples: int | None = None  # default: eval.num_samples
    ks: list[int] | None = None  # default: eval.ks


@dataclass
class EvalConfig:
    """Benchmarks, sampling and metrics for scripts/eval.py and for evaluation during training."""
    benchmarks: list[BenchmarkConfig] = field(default_factory=list)
    num_samples: int = 1  # n completions per problem
    ks: list[int] = field(default_factory=lambda: [1])  # report pass@k, maj@k, mean@k for each k <= n
    temperature: float = 0.0  # 0 = greedy decoding
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 1024
    batch_size: int = 16  # problems per generate call (each with its n samples)
    system_prompt: str | None = None  # None: data.system_prompt, the prompt the model was trained with
    correct_threshold: float = 1.0  # a sample counts as correct when its reward is >= this
    cache_dir: str | None = None  # completions cache; None = <output_dir>/eval_cache
    every: int = 0  # during training: evaluate every N steps (0 = never)
    seed: int = 0


@dataclass
class Config:
    output_dir: str = "runs/default"
    resume_from: str | None = None  # a checkpoint dir, or 'latest' (newest under output_dir/checkpoints)
    overwrite_output_dir: bool = False  # start over in an output_dir that holds another run, deleting its metrics and checkpoints
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rewards: list[RewardConfig] = field(default_factory=lambda: [RewardConfig()])
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    methods: dict = field(default_factory=dict)  # more training methods by name -> their parameters (mmrl.core.methods: a registered name or 'package.module:Class')
    optim: OptimConfig = field(default_factory=OptimConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ------------------------------------------------------------------ building and checking
def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, key: str):
    """Check `value` against the annotation `tp`, converting int -> float; raise naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return build(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}.{i}") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return value
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got bool {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def build(cls, data: dict, prefix: str = ""):
    """Instantiate dataclass `cls` from a nested dict; unknown keys raise with close matches."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            where = f"'{prefix}'" if prefix else "the top level"
            err = ConfigError(f"unknown config key '{full}'{hint}; valid keys in {where}: {names}")
            err.key = full
            raise err
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node: Any = tree
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[int(part)]
            continue
        if part not in node or node[part] is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"config key '{'.'.join(parts[:i + 1])}' is a value, not a section")
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


_SCHEMAS: dict = {}


def with_sections(cls, sections: dict[str, type]) -> type:
    """`cls` extended with config sections ({dotted key: dataclass}, e.g. {"model.diffusion":
    DiffusionConfig}): a subclass whose new fields (nested ones in subclasses of their parents)
    default to each section's defaults. The same arguments give the same class."""
    if not sections:
        return cls
    cache_key = (cls, tuple(sorted(sections.items(), key=lambda kv: kv[0])))
    if cache_key in _SCHEMAS:
        return _SCHEMAS[cache_key]
    hints = typing.get_type_hints(cls)
    nested: dict[str, dict] = {}
    fields = []
    for key, section in sections.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = section
        elif head in hints:
            raise ValueError(f"config section '{head}' of a model family: {cls.__name__} already has '{head}'")
        else:
            fields.append((head, section, field(default_factory=section)))
    for head, inner in nested.items():
        if head not in hints or not dataclasses.is_dataclass(hints[head]):
            raise ValueError(f"config section '{head}.{next(iter(inner))}': '{head}' is not a section of {cls.__name__}")
        sub = with_sections(hints[head], inner)
        fields.append((head, sub, field(default_factory=sub)))
    schema = dataclasses.make_dataclass(cls.__name__, fields, bases=(cls,))
    schema.__module__, schema.__doc__ = cls.__module__, cls.__doc__
    _SCHEMAS[cache_key] = schema
    return schema


def schema_for(modality: str, cls=Config) -> type:
    """The config schema of a run of model family `modality`: `cls` with that family's sections."""
    from mmrl.modalities import config_sections

    return with_sections(cls, config_sections(modality))


def _section_owner(key: str, modality: str) -> str | None:
    """The built-in model family that owns config section `key` (other than `modality`), if any."""
    from mmrl.modalities import BUILT_IN, config_sections

    for name in BUILT_IN:
        try:
            sections = config_sections(name) if name != modality else {}
        except ImportError:  # a family whose optional dependencies are not installed
            continue
        if any(key == s or key.startswith(s + ".") for s in sections):
            return name
    return None


def load_config(path: str | Path | list | None = None, overrides: list[str] = (), cls=Config):
    """Load `path` (a yaml file, or several merged in order: a base recipe, then method overlays
    such as configs/methods/gdpo.yaml) into `cls`, then apply `key=value` overrides (values parsed
    as yaml)."""
    tree = to_dict(cls())
    paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
    for p in paths:
        loaded = yaml.safe_load(Path(p).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level of a config must be a mapping")
        _merge(tree, loaded)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. trainer.max_steps=20)")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), _parse_value(raw))
    modality = (tree.get("model") or {}).get("modality", "text")
    if not isinstance(modality, str):
        raise ConfigError(f"config key 'model.modality': expected str, got {modality!r}")
    try:
        schema = schema_for(modality, cls)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    try:
        return build(schema, tree)
    except ConfigError as err:
        key = getattr(err, "key", None)
        owner = key and _section_owner(key, modality)
        if owner:
            raise ConfigError(f"config key '{key}' belongs to the {owner} model family (model.modality: {owner}); "
                              f"this config has model.modality: {modality}: remove the key or change "
                              "the modality") from None
        raise


def config_from_cli(argv, description: str, modality: str | None = None, cls=Config):
    """The run config of a script's command line: `--config` yaml files (repeatable: a base recipe,
    then overlays) and dotted `key=value` overrides; logging set up; with `modality`, a config for
    another model family is refused naming the field."""
    import argparse
    import logging

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, action="append",
                        help="recipe yaml under configs/; repeat to overlay a method, e.g. "
                             "--config configs/tiny_text_grpo.yaml --config configs/methods/gdpo.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. trainer.max_steps=20")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_repeated_warnings()
    cfg = load_config(args.config, args.overrides, cls=cls)
    if modality is not None and cfg.model.modality != modality:
        raise SystemExit(f"model.modality={cfg.model.modality!r}: this script trains model.modality: {modality}; "
                         "use the script of that modality")
    return cfg


class _FirstOfEach:
    """A logging filter that lets the first record of each message through and drops its repeats."""

    def __init__(self):
        self.seen: set[str] = set()

    def filter(self, record) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def quiet_repeated_warnings() -> None:
    """Library warnings that repeat at every step or checkpoint are shown once: Python warnings of each
    text once (not once per call site and module), and accelerate's note on the tied embeddings that
    every checkpoint save logs ('Removed shared tensor ...')."""
    import logging
    import warnings

    warnings.simplefilter("once", FutureWarning)
    warnings.simplefilter("once", UserWarning)
    logger = logging.getLogger("accelerate.utils.other")
    if not any(isinstance(f, _FirstOfEach) for f in logger.filters):
        logger.addFilter(_FirstOfEach())


def _parse_value(raw: str):
    """An override's value as yaml (numbers, lists, mappings); text yaml cannot read stays text."""
    if not raw.strip():
        return None
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _merge(base: dict, new: dict) -> None:
    """Recursive update; lists and scalars in `new` replace those in `base`, and so do free-form
    parameter mappings (`params`, `*_params`): an overlay's loss_params are the loss's whole set."""
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and not key.endswith("params"):
            _merge(base[key], value)
        else:
            base[key] = value
