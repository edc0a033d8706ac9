"""Typed run configuration: YAML files with inheritance + ``section.key=value`` overrides -> dataclasses.

A config file is a YAML mapping of sections (``run``, ``data``, ``model``, ...). It may name parent
files in a top-level ``base:`` list (paths relative to the file); parents are merged first, in
order, then the file itself, then command-line overrides. Every key is checked against the
dataclasses below: an unknown key or a value of the wrong type raises :class:`ConfigError` naming
the dotted key and the closest valid keys or the allowed values.

Example::

    cfg = load_config("configs/coin.yaml", ["train.max_steps=100", "data.shards=cache/coin"])
    save_config(cfg, cfg.run.dir)  # writes <run.dir>/config.yaml, the resolved config
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the dotted key."""


@dataclass
class RunConfig:
    """Where and how a run lives."""

    dir: str = "runs/default"  # output directory: checkpoints, logs, resolved config
    mode: Literal["pretrain", "finetune", "eval"] = "finetune"
    seed: int = 1112
    init_from: str | None = None  # checkpoint directory of a pretraining run (finetune only)
    # continue a run.dir whose saved identity (shards, classes, model) differs: a deliberate change
    allow_changed_config: bool = False


@dataclass
class DataConfig:
    """Streaming data: shards written by ``tools/make_shards.py`` and clip sampling."""

    shards: str = ""  # directory with manifest.json, a brace pattern, pipe: or fsspec URL
    backend: Literal["auto", "dali", "cpu", "features"] = "auto"
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    batch_size: int = 8  # clips per rank per micro-step
    num_workers: int = 2
    image_size: int = 224  # pixels, square crop fed to the frame encoder
    # training augmentation (video path; one draw per clip, the same for all its frames): a random
    # resized crop of this area fraction range [lo, hi] of the frame at an aspect ratio log-uniform in
    # crop_ratio, resized to image_size (null: resize the short side, random image_size crop), and a
    # horizontal flip with probability hflip. Evaluation always takes the centre crop.
    # multi-label training targets of a clip: "timed" = the classes whose timed actions overlap it
    # (Charades' start/end, clamped to the video), "video" = every class of the video
    window_labels: Literal["timed", "video"] = "video"
    # multi-label evaluation: a video's score per class from its windows' sigmoid scores, mean or max
    window_aggregate: Literal["mean", "max"] = "mean"
    crop_scale: list[float] | None = None
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333333])
    hflip: float = 0.0
    frames: int = 60  # T: frames per clip (finetune/eval); the sampling rate is frames / clip_seconds
    clip_seconds: float = 60.0  # span of one clip/window, seconds
    eval_stride_seconds: float = 1.0  # LVU protocol: windows every 1 s
    eval_clip: Literal["center", "full", "windows"] = "center"
    # window: one clip of clip_seconds (random in training, eval_clip in evaluation); segments: the
    # ViS4mer authors' Breakfast/COIN protocol - `frames` segments of segment_seconds over the whole
    # video, a random sorted sample in training, uniformly spaced in evaluation (data.clips)
    sampling: Literal["window", "segments"] = "window"
    segment_seconds: float = 1.0
    # windows only: further strides (seconds; 0 = clip_seconds, no overlap) the test split is also
    # evaluated at, reported side by side (seed 004's overlap table); model selection uses eval_stride_seconds
    eval_strides_seconds: list[float] = field(default_factory=list)
    long_frames: int = 16  # LSMCL long clip T_long
    long_seconds: float = 16.0  # S_long
    short_frames: int = 4  # LSMCL short clip T_short
    short_seconds: float = 4.0  # S_short
    short_inside_long: bool = True  # place the short clip inside the long span
    features: str | None = None  # directory of <split>.beton frozen features (backend=features)
    cache_dir: str | None = None  # local copy of remote shards (http://, s3://...): later epochs read it
    cache_size_gb: float = 100.0  # cache_dir is kept under this size, least recently fetched shards go first


@dataclass
class ModelConfig:
    """Model choice; names come from ``models.list_models()``."""

    name: str = "s5_debug"
    encoder: str = "efficientnet_lite0"
    encoder_weights: str | None = None  # local checkpoint path, None = packaged default
    num_classes: int = 0  # 0 = from the shards' manifest
    task: Literal["classification", "regression", "multilabel", "captioning"] = "classification"
    # Encoder tokens per frame (ViS4mer section 4.3, Table 3 / Fig. 3): "patch" = the patch grid
    # (ViT-L/16: 14 x 14 = 196), "cls" = the CLS token only (1; 60 frames -> 60 tokens),
    # "cls+patch" = both (197, no grid: max_st pooling cannot run on it)
    frame_tokens: Literal["patch", "cls", "cls+patch"] = "patch"
    spatial_grid: int = 0  # >0: max-pool each frame's patch grid to s x s first (5: 1,500, 7: 2,940 tokens at 60 frames)
    width: int | None = 1024  # decoder input channels; null = the registered flavour's
    depth: int | None = 3
    state_size: int | None = 64  # N, SSM state size
    kernel: Literal["s4d", "s4"] | None = None  # S4 convolution kernel; null = the model's (s4: NPLR, as the paper)
    # ViS4mer block (ViS4mer/S5/LST/Performer/Orthoformer): "authors" = the public code that produced the papers'
    # tables (residual S4, AvgPool1d, Linear + GELU); "paper" = eq. 4 as written (MLP(Pool(S4)) + Linear(Pool(x)))
    block: Literal["authors", "paper"] = "authors"
    pool: Literal["avg1d", "max_st", "none"] | None = None  # null = the block's (authors: avg1d; paper: max_st; S5: avg1d)
    channel_scaling: bool = True  # halve the width in each decoder block (ViS4mer Table 5 ablates both switches)
    dropout: float | None = 0.2
    num_features: int | None = None  # Performer: random features m per head; null = the flavour's (256)
    num_landmarks: int | None = None  # Orthoformer: landmarks m per head; null = the flavour's (128)
    mlp_layers: list[int] = field(default_factory=lambda: [1024, 1024])  # mlp_head: hidden widths (seed 004)
    mlp_layernorm: bool = False  # mlp_head: LayerNorm after each hidden Linear (seed 004's best: off)
    gpt2: str | None = None  # gpt2_captioner: local GPT-2 directory (transformers format); null = a new GPT-2
    caption_beams: int = 1  # gpt2_captioner: 1 = greedy decoding, > 1 = beam search with that many beams
    caption_max_tokens: int = 128  # gpt2_captioner: longest caption, tokens (seed 004: 128)
    keep_ratio: float = 0.5  # S5: fraction of tokens kept by the mask generator
    mask_generator: Literal[
        "linear", "linear_s4", "single_tx", "single_tx_s4", "stacked_tx", "stacked_tx_s4", "random"
    ] = "linear_s4"
    # S5: "gather" runs the decoder on the k kept tokens (the speed-up); "mask" multiplies every token by its
    # mask and runs all L (the poster's x_hat = x (x) Mask: a per-token gradient for dropped tokens, no speed-up)
    selection: Literal["gather", "mask"] = "gather"
    gumbel_temperature: float = 1.0
    momentum: float = 0.996  # EMA m for the momentum S4 / key encoder
    mask_ratio: float = 0.5  # LSMCL eta
    proj_dim: int = 128  # LSMCL projection head's output width (MoCo v3's 128 in the poster's setup)
    contrastive_temperature: float = 0.07  # LSMCL rho


@dataclass
class TrainConfig:
    """Optimisation."""

    epochs: float = 0.0  # passes over the train split; steps = ceil(epochs * samples / global batch); 0: max_steps
    max_steps: int = 1000  # optimizer steps when epochs is 0
    global_batch_size: int = 0  # clips per optimizer step over all ranks; 0 = data.batch_size x world size.
    # Gradient accumulation = global_batch_size / (data.batch_size x world size): the same optimisation on 1 GPU or 32
    lr: float = 1e-3
    ssm_lr: float = 1e-3  # the SSM parameters' group (A, B, dt, P): this lr, weight decay 0
    weight_decay: float = 0.01
    adam_eps: float = 1.0e-8  # AdamW epsilon (seed 004's captioner: 1e-6)
    warmup_steps: int = 100
    grad_clip: float = 1.0
    precision: Literal["fp32", "bf16"] = "bf16"
    zero_stage: Literal[0, 1, 2, 3] = 2
    eval_every_steps: int = 500  # 0 = once per epoch
    max_nonfinite_steps: int = 10  # stop after this many NaN/inf losses in a row
    label_smoothing: float = 0.0  # classification: cross-entropy label smoothing
    pos_weight: float = 2.0  # multilabel: BCE-with-logits weight of the positives (Charades, seed 004: 2)


@dataclass
class CheckpointConfig:
    """Checkpointing; ``resume: auto`` = the latest valid checkpoint in ``run.dir``."""

    every_steps: int = 500  # 0 = once per epoch
    keep_last: int = 3
    resume: str = "auto"  # "auto", "none" or a checkpoint directory


@dataclass
class LoggingConfig:
    every_steps: int = 10
    tensorboard: bool = True
    progress_bar: bool = True
    sample_keys: bool = False  # each rank appends the sample keys of every micro-batch to samples-rank<r>.jsonl


@dataclass
class LaunchConfig:
    """Slurm defaults for ``launchers/submit.py`` (CLI flags override)."""

    nodes: int = 1
    gpus_per_node: int = 8  # GPUs requested per node (0 on CPU-only clusters)
    tasks_per_node: int = 0  # trainer processes per node; 0 = one per GPU (1 if gpus_per_node is 0)
    cpus_per_task: int = 10
    partition: str | None = None
    time_min: int = 4320
    account: str | None = None
    qos: str | None = None
    max_requeues: int = 3  # preemption/time-limit requeues of one job before it fails
    finetunes: list[str] = field(default_factory=list)  # tasks `submit.py pipeline` runs after pretraining
    init_from_pretrain: bool = True  # in a pipeline, finetune from the pretraining run (False: baselines)
    # in a pipeline (read from the pretraining config): the finetunes train on a frozen-feature cache
    # (data.backend=features) extracted once per encoder/input/shards by a features stage, as ViS4mer trains
    finetune_features: bool = False


@dataclass
class Config:
    """The whole run configuration."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)


# ----------------------------------------------------------------------------- loading

def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Read ``path`` and merge its ``base:`` parents first (depth-first, in list order)."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: circular 'base:' chain: {' -> '.join(map(str, seen + (path,)))}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    bases = raw.pop("base", []) or []
    if isinstance(bases, str):
        bases = [bases]
    merged: dict = {}
    for b in bases:
        _deep_merge(merged, _read_yaml(path.parent / b, seen + (path,)))
    _deep_merge(merged, raw)
    return merged


def _deep_merge(dst: dict, src: dict) -> dict:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_merge(dst[k], v)
        else:
            dst[k] = v
    return dst


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``section.key=value`` into (["section", "key"], value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    key, value = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"override {text!r}: key must be section.key (e.g. train.max_steps=10)")
    return parts, yaml.safe_load(value) if value.strip() != "" else ""


def _closest(name: str, options: list[str]) -> str:
    near = difflib.get_close_matches(name, options, n=3, cutoff=0.5)
    return f"did you mean {', '.join(near)}?" if near else f"valid keys: {', '.join(options)}"


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert ``value`` against the annotation ``tp``; raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value in allowed and type(value) in {type(a) for a in allowed}:
            return value
        raise ConfigError(f"{key}: {value!r} is not allowed; allowed values: {', '.join(map(repr, allowed))}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        out = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out = float(value)
        elif isinstance(value, str):  # PyYAML (YAML 1.1) reads "3e-3" as a string
            try:
                out = float(value)
            except ValueError:
                pass
        if out is None:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(out):
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        return out
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")


def _build(cls: type, data: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in hints:
            raise ConfigError(f"unknown config key {key!r}: {_closest(str(k), names)}")
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            if not isinstance(v, dict):
                raise ConfigError(f"{key}: expected a mapping of keys, got {v!r}")
            kwargs[k] = _build(tp, v, f"{key}.")
        else:
            kwargs[k] = _coerce(v, tp, key)
    return cls(**kwargs)


def config_from_dict(data: dict) -> Config:
    """Validate a nested dict into a :class:`Config` (raises :class:`ConfigError`)."""
    return _build(Config, data, "")


def load_config(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load ``path`` (with its ``base:`` parents) and apply ``overrides`` (``section.key=value``).

    Raises:
        ConfigError: unknown key (with the closest valid keys), wrong type or disallowed value
            (with the allowed values), missing file, circular ``base:``.
    """
    data = _read_yaml(Path(path)) if path else {}
    for o in overrides:
        parts, value = parse_override(o)
        node = data
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {o!r}: {p!r} is not a section")
            node = nxt
        node[parts[-1]] = value
    cfg = config_from_dict(data)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    positive = {
        "data.batch_size": cfg.data.batch_size, "data.frames": cfg.data.frames,
        "data.image_size": cfg.data.image_size, "data.clip_seconds": cfg.data.clip_seconds,
        "logging.every_steps": cfg.logging.every_steps,
    }
    if not cfg.train.epochs:
        positive["train.max_steps"] = cfg.train.max_steps
    for key, v in positive.items():
        if v <= 0:
            raise ConfigError(f"{key}: must be > 0, got {v}")
    if cfg.train.lr <= 0:
        raise ConfigError(f"train.lr: must be > 0, got {cfg.train.lr}")
    non_negative = {"train.epochs": cfg.train.epochs, "train.global_batch_size": cfg.train.global_batch_size,
                    "data.num_workers": cfg.data.num_workers, "train.ssm_lr": cfg.train.ssm_lr,
                    "train.weight_decay": cfg.train.weight_decay, "train.grad_clip": cfg.train.grad_clip,
                    "train.eval_every_steps": cfg.train.eval_every_steps,
                    "checkpoint.every_steps": cfg.checkpoint.every_steps, "train.warmup_steps": cfg.train.warmup_steps}
    for key, v in non_negative.items():
        if v < 0:
            raise ConfigError(f"{key}: must be >= 0, got {v}")
    if not 0.0 < cfg.model.keep_ratio <= 1.0:
        raise ConfigError(f"model.keep_ratio: must be in (0, 1], got {cfg.model.keep_ratio}")
    if not 0.0 <= cfg.model.mask_ratio < 1.0:
        raise ConfigError(f"model.mask_ratio: must be in [0, 1), got {cfg.model.mask_ratio}")
    if cfg.data.short_seconds > cfg.data.long_seconds and cfg.data.short_inside_long:
        raise ConfigError("data.short_seconds: must be <= data.long_seconds when data.short_inside_long is true")
    if cfg.data.sampling == "segments":
        if cfg.data.segment_seconds <= 0:
            raise ConfigError(f"data.segment_seconds: must be > 0, got {cfg.data.segment_seconds}")
        if cfg.data.eval_clip != "center":
            raise ConfigError(f"data.eval_clip: {cfg.data.eval_clip!r} does not apply with data.sampling=segments "
                              "(evaluation takes uniformly spaced segments over the whole video); leave it at "
                              "'center' or set data.sampling=window")
        if cfg.run.mode == "pretrain":
            raise ConfigError("data.sampling: 'segments' applies to finetune and eval runs; LSMCL pretraining cuts "
                              "its long and short clips by data.long_seconds / data.short_seconds (allowed: 'window')")
    d = cfg.data
    if d.crop_scale is not None and (len(d.crop_scale) != 2 or not 0.0 < d.crop_scale[0] <= d.crop_scale[1] <= 1.0):
        raise ConfigError(f"data.crop_scale: [lo, hi] with 0 < lo <= hi <= 1 (area fractions), or null; got {d.crop_scale}")
    if len(d.crop_ratio) != 2 or not 0.0 < d.crop_ratio[0] <= d.crop_ratio[1]:
        raise ConfigError(f"data.crop_ratio: [lo, hi] with 0 < lo <= hi (width / height); got {d.crop_ratio}")
    if not 0.0 <= d.hflip <= 1.0:
        raise ConfigError(f"data.hflip: a probability in [0, 1]; got {d.hflip}")
    if cfg.data.eval_strides_seconds and cfg.data.eval_clip != "windows":
        raise ConfigError("data.eval_strides_seconds: needs data.eval_clip=windows (strides of sliding windows), "
                          f"got eval_clip={cfg.data.eval_clip!r}")
    if any(s < 0 for s in cfg.data.eval_strides_seconds):
        raise ConfigError(f"data.eval_strides_seconds: must be >= 0 (0 = clip_seconds), got {cfg.data.eval_strides_seconds}")
    if cfg.model.caption_beams < 1 or cfg.model.caption_max_tokens < 1:
        raise ConfigError("model.caption_beams / model.caption_max_tokens: must be >= 1, got "
                          f"{cfg.model.caption_beams} / {cfg.model.caption_max_tokens}")
    if cfg.checkpoint.keep_last < 1:
        raise ConfigError(f"checkpoint.keep_last: must be >= 1, got {cfg.checkpoint.keep_last}")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, run_dir: str | os.PathLike) -> Path:
    """Write the resolved config to ``<run_dir>/config.yaml`` atomically; returns the path."""
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".config.yaml.tmp"
    with open(tmp, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
    os.replace(tmp, out / "config.yaml")
    return out / "config.yaml"
