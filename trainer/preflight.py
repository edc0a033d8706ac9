"""Checks that stop a misconfigured run before any training step and before any job is queued.

:func:`preflight` reads only the config, the shards' ``manifest.json`` and the file system (no
model, no process group), so ``trainer/main.py`` runs it before starting DeepSpeed and
``launchers/submit.py`` runs it for every stage before submitting anything (``--dry-run``
included). Each problem raises :class:`trainer.config.ConfigError` with one line naming the key
and the fix.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from s5video.trainer.config import Config, ConfigError


def splits_read(cfg: Config) -> dict[str, str]:
    """The shard splits a run reads, as {config key: split name} (``a+b`` is two splits)."""
    d, mode = cfg.data, cfg.run.mode
    if mode == "pretrain":
        return {"data.train_split": d.train_split}
    if mode == "eval":
        return {"data.test_split": d.test_split}
    return {"data.train_split": d.train_split, "data.val_split": d.val_split, "data.test_split": d.test_split}


def _manifest(shards: str) -> dict | None:
    """The manifest of a make_shards output directory or URL (None for a bare shard pattern)."""
    if "://" in shards or os.path.isdir(shards):
        from s5video.data.sources import read_manifest
        try:
            return read_manifest(shards)
        except FileNotFoundError as e:  # its message names data.shards and the fix
            raise ConfigError(str(e)) from None
        except (OSError, ValueError) as e:
            raise ConfigError(f"data.shards: cannot read {shards.rstrip('/')}/manifest.json ({e}); point it at a "
                              "tools/make_shards.py output") from None
    if not shards:
        raise ConfigError("data.shards: empty; set data.shards=<a tools/make_shards.py output directory>")
    if not any(c in shards for c in "{:") and not os.path.exists(shards):
        raise ConfigError(f"data.shards: {shards} does not exist; run tools/make_shards.py first or fix the path")
    return None


def preflight(cfg: Config, init_from_pending: bool = False, features_pending: bool = False) -> dict:
    """Check ``cfg`` against the shards and the file system; returns the manifest (or {}).

    ``init_from_pending`` / ``features_pending``: ``run.init_from`` / the ``data.features`` cache is
    written by an earlier stage of the same pipeline.

    Raises:
        ConfigError: a split the run reads is missing or empty; ``run.init_from``,
            ``model.encoder_weights``, ``data.features`` or ``checkpoint.resume`` does not exist;
            ``model.num_classes`` or ``model.task`` disagrees with the manifest; the model's
            pooling cannot run on its tokens (see ``_check_model``).
    """
    d, m = cfg.data, cfg.model
    manifest = _manifest(d.shards) or {}
    splits = manifest.get("splits", {})
    if manifest:
        for key, value in splits_read(cfg).items():
            for split in value.split("+"):
                if split not in splits:
                    carved = " (make_shards.py carves one from train: --val-fraction)" if key == "data.val_split" else ""
                    raise ConfigError(
                        f"{key}: split {split!r} is not in {d.shards}; its splits are {', '.join(sorted(splits))}. "
                        f"Set {key}=<one of them> or re-shard with that split{carved}")
                if not splits[split].get("num_samples"):
                    raise ConfigError(f"{key}: split {split!r} of {d.shards} has no samples; re-run make_shards.py")
        if cfg.run.mode != "pretrain":
            _check_task(cfg, manifest)
            _check_classes(cfg, manifest)
    check_run_dir(cfg, manifest)
    if cfg.run.mode == "finetune" and cfg.run.init_from and not init_from_pending:
        p = Path(cfg.run.init_from)
        complete = (p / "meta.json").exists() or any((c / "meta.json").exists() for c in (p / "checkpoints").glob("step*"))
        if not complete:
            raise ConfigError(f"run.init_from: {p} holds no complete checkpoint (a pretraining run directory or one of "
                              "its checkpoints/stepN); set run.init_from=null to train from scratch")
        _check_init_from(cfg, p)
    if m.encoder_weights and not Path(m.encoder_weights).exists():
        raise ConfigError(f"model.encoder_weights: {m.encoder_weights} does not exist; give a local checkpoint of "
                          f"{m.encoder}, or model.encoder_weights=null for the packaged default")
    from s5video.models.encoders import ENCODERS
    if m.encoder not in ENCODERS:
        raise ConfigError(f"model.encoder: {m.encoder!r} not allowed; allowed values: {', '.join(ENCODERS)}")
    if ENCODERS[m.encoder].needs_weights and not m.encoder_weights and d.backend != "features":  # cached: no encoder
        raise ConfigError(f"model.encoder_weights: {m.encoder} needs a local checkpoint directory (nothing is "
                          "downloaded at run time); or use model.encoder=efficientnet_lite0")
    _check_model(cfg)
    if d.backend == "features":
        if cfg.run.mode == "pretrain":
            raise ConfigError("data.backend: 'features' serves finetune and eval; LSMCL pretraining cuts long and short "
                              "clips from the video each step: use data.backend=auto")
        if not features_pending:
            _check_features(cfg)
        elif not cfg.data.features:
            raise ConfigError("data.features: data.backend=features needs the cache directory to write")
    resume = cfg.checkpoint.resume
    if resume not in ("auto", "none") and not (Path(resume) / "meta.json").exists():
        raise ConfigError(f"checkpoint.resume: {resume} is not a complete checkpoint (no meta.json); use auto or none")
    return manifest


def elastic_resume(cfg: Config, world: int) -> str | None:
    """When ``cfg`` would resume from a checkpoint saved by another number of ranks than ``world``: a
    one-line description of that resume (None otherwise). Raises ConfigError when the data loader
    cannot resume at another world size (``data.backend=dali``): caught before a job queues."""
    import torch

    from s5video.trainer.checkpoint import checkpoint_world, resolve_resume
    ckpt = resolve_resume(cfg.checkpoint.resume, cfg.run.dir)
    if ckpt is None or checkpoint_world(ckpt) == world:
        return None
    saved = checkpoint_world(ckpt)
    if cfg.run.mode != "eval":
        read_by = torch.load(ckpt / "rank00000.pt", weights_only=False)["loader"].get("backend", "cpu")
        if "dali" in (cfg.data.backend, read_by):
            raise ConfigError(f"data.backend: {cfg.data.backend!r} cannot resume {ckpt} (saved by {saved} ranks, read "
                              f"with {read_by!r}) on {world} ranks: DALI's readers keep their position per rank. "
                              f"Resume on {saved} ranks{', or with data.backend=cpu' if read_by != 'dali' else ''}")
    return (f"resumes {ckpt} (saved by {saved} ranks) on {world} ranks: ZeRO state through a universal checkpoint, "
            f"the unread samples of the interrupted pass dealt to the {world} ranks")


def train_samples(cfg: Config, manifest: dict) -> int | None:
    """Samples in the split(s) the run trains on, from the manifest (None when it has none)."""
    splits = manifest.get("splits", {})
    parts = cfg.data.train_split.split("+")
    if not splits or any(p not in splits for p in parts):
        return None
    return sum(int(splits[p]["num_samples"]) for p in parts)


def _check_task(cfg: Config, manifest: dict) -> None:
    m = cfg.model
    task, classes = manifest.get("task"), manifest.get("classes") or []
    compatible = {"classification": {"classification", "multilabel", "captioning"},
                  "multilabel": {"multilabel", "captioning"}, "regression": {"regression"}}
    if task and m.task not in compatible.get(task, {m.task}):
        raise ConfigError(f"model.task: {m.task!r}, but the shards in {cfg.data.shards} are a {task} dataset; "
                          f"set model.task={task}")
    if m.task in ("classification", "multilabel") and classes and m.num_classes and m.num_classes != len(classes):
        raise ConfigError(f"model.num_classes: {m.num_classes}, but the shards in {cfg.data.shards} have "
                          f"{len(classes)} classes ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}); "
                          f"set model.num_classes={len(classes)} or 0 (= from the manifest)")


def _check_classes(cfg: Config, manifest: dict) -> None:
    """A classifier needs two classes, and a training sample of every class that had training inputs
    (``classes_without_train``: make_shards rejected every training file of those classes)."""
    m, classes = cfg.model, manifest.get("classes") or []
    if m.task == "classification" and (m.num_classes or len(classes)) == 1:
        raise ConfigError(f"data.shards: {cfg.data.shards} has one class ({classes[0] if classes else '?'}); "
                          "classification needs at least two. Add videos of another class and re-shard")
    missing = manifest.get("classes_without_train") or []
    if cfg.run.mode == "finetune" and m.task in ("classification", "multilabel") and missing:
        raise ConfigError(f"data.shards: {len(missing)} class(es) of {cfg.data.shards} have no training sample "
                          f"(every training file was rejected; see its rejected.jsonl): {', '.join(missing[:10])}"
                          f"{' ...' if len(missing) > 10 else ''}. Fix or replace those files and re-run make_shards.py")


# model keys that change only how a trained model is used, not what it is
_IDENTITY_IGNORED_MODEL_KEYS = ("caption_beams", "caption_max_tokens")
IDENTITY_FILE = "identity.json"


def run_identity(cfg: Config, manifest: dict) -> dict:
    """What a run directory's checkpoints belong to: the data (shards, classes, the samples of the
    splits read) and the model (every ``model.*`` key but decoding settings), and the mode."""
    d = cfg.data
    shards = d.shards if "://" in d.shards else os.path.realpath(d.shards) if d.shards else d.shards
    splits = manifest.get("splits", {})
    read = {s: splits.get(s, {}).get("num_samples") for v in splits_read(cfg).values() for s in v.split("+")}
    model = {k: v for k, v in vars(cfg.model).items() if k not in _IDENTITY_IGNORED_MODEL_KEYS}
    return {"run.mode": cfg.run.mode, "data.shards": shards, "classes": list(manifest.get("classes") or []),
            "samples": read, "model": model}


def _identity_diff(saved: dict, now: dict, mode: str) -> list[str]:
    """The differences that make ``now`` another run than ``saved`` (eval: the model and classes only,
    so a checkpoint may be evaluated on other shards)."""
    diffs = []
    if saved.get("classes") and now["classes"] and saved["classes"] != now["classes"]:
        diffs.append(f"classes {len(saved['classes'])} ({', '.join(saved['classes'][:3])}...) -> "
                     f"{len(now['classes'])} ({', '.join(now['classes'][:3])}...)")
    for k, v in now["model"].items():
        if k in saved.get("model", {}) and saved["model"][k] != v:
            diffs.append(f"model.{k} {saved['model'][k]!r} -> {v!r}")
    if mode != "eval":
        if saved.get("data.shards") != now["data.shards"]:
            diffs.append(f"data.shards {saved.get('data.shards')} -> {now['data.shards']}")
        for split, n in now["samples"].items():
            old = (saved.get("samples") or {}).get(split)
            if old is not None and n is not None and old != n:
                diffs.append(f"split {split!r} {old} -> {n} samples")
    return diffs


def check_run_dir(cfg: Config, manifest: dict) -> None:
    """``run.dir`` belongs to one run: refuse (before anything is written there) a directory that is a
    file, or that holds a run of other data or another model (``identity.json``, written by the
    trainer), unless ``run.allow_changed_config`` is set for a deliberate change."""
    run_dir = Path(cfg.run.dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run.dir: {run_dir} is a file, not a directory; set run.dir=<a new directory>")
    saved_path = run_dir / IDENTITY_FILE
    if cfg.run.allow_changed_config or not saved_path.exists():
        return
    try:
        saved = json.loads(saved_path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"run.dir: cannot read {saved_path} ({e}); use a new run.dir") from None
    diffs = _identity_diff(saved, run_identity(cfg, manifest), cfg.run.mode)
    if diffs:
        raise ConfigError(f"run.dir: {run_dir} holds a run of other data or another model ({'; '.join(diffs[:4])}"
                          f"{'; ...' if len(diffs) > 4 else ''}); continuing it would mix two runs. Use a new "
                          "run.dir, or run.allow_changed_config=true to change it deliberately")


# the model keys that decide which tensors a checkpoint has and their shapes
_WEIGHT_SHAPE_KEYS = ("name", "encoder", "frame_tokens", "spatial_grid", "width", "depth", "state_size", "kernel",
                      "mask_generator", "channel_scaling")


def _check_init_from(cfg: Config, path: Path) -> None:
    """``run.init_from`` must be able to load: its model (pretraining or finetune run) has the same
    architecture keys as this one; the classification head may differ (it is reinitialised)."""
    from s5video.trainer.checkpoint import resolve_resume
    ckpt = resolve_resume("auto", str(path)) if (path / "checkpoints").is_dir() else path
    try:
        saved = json.loads((ckpt / "meta.json").read_text()).get("config", {}).get("model", {})
    except (OSError, ValueError, AttributeError):
        return
    diffs = [f"model.{k} {saved[k]!r} there, {getattr(cfg.model, k)!r} here" for k in _WEIGHT_SHAPE_KEYS
             if k in saved and saved[k] != getattr(cfg.model, k)]
    if diffs:
        raise ConfigError(f"run.init_from: {ckpt} is another model ({'; '.join(diffs)}): no weight would load. Set "
                          "the same model.* keys, or run.init_from=null to train from scratch")


def _check_model(cfg: Config) -> None:
    """The model name, and token choices the decoder can run on: max_st pooling needs the tokens on
    their (T, H', W') grid, which CLS + patch tokens, LSMCL's random masks and S5's selection lose."""
    from s5video.models.encoders import ENCODERS
    from s5video.models.registry import family_of
    m = cfg.model
    try:
        family = family_of(m.name)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if (family == "gpt2_captioner") != (m.task == "captioning"):
        raise ConfigError(f"model.task: {m.task!r} with model.name={m.name!r}: captioning needs a captioner "
                          "(gpt2_captioner, gpt2_captioner_debug) and a captioner needs model.task=captioning")
    if m.task == "captioning":
        if cfg.train.zero_stage == 3:
            raise ConfigError("train.zero_stage: 3 is not allowed for captioning (ranks generate captions of "
                              "different lengths; ZeRO-3 gathers weights collectively in every forward); "
                              "allowed values: 0, 1, 2")
        if cfg.data.backend == "dali":
            raise ConfigError("data.backend: 'dali' does not carry captions; allowed values for captioning: "
                              "auto, cpu, features")
        if m.gpt2 and not Path(m.gpt2).is_dir():
            raise ConfigError(f"model.gpt2: {m.gpt2} is not a local GPT-2 directory (transformers format); "
                              "model.gpt2=null trains a new GPT-2")
    if "cls" in m.frame_tokens and not ENCODERS[m.encoder].has_cls:
        raise ConfigError(f"model.frame_tokens: {m.encoder} has no CLS token; use frame_tokens=patch (with "
                          "model.spatial_grid=1 for one token per frame)")
    if family == "s5" and m.pool == "max_st":
        raise ConfigError("model.pool: 'max_st' is not allowed for S5 (its selected tokens are no longer on a grid); "
                          "allowed values: avg1d, none, null (= avg1d)")
    from s5video.models.factory import CONFIG_ARGS
    from s5video.models.vis4mer import BLOCK_POOL
    pool = (m.pool or {"s5": "avg1d"}.get(family, BLOCK_POOL[m.block])) if "pool" in CONFIG_ARGS[family] else None
    if pool == "max_st" and m.frame_tokens == "cls+patch":
        raise ConfigError(f"model.pool: max_st (set, or the default of model.block={m.block}) needs tokens on a grid; "
                          "model.frame_tokens=cls+patch has none. Use frame_tokens=patch or cls, or model.pool=avg1d")
    if pool == "max_st" and cfg.run.mode == "pretrain":
        raise ConfigError(f"model.pool: max_st (set, or the default of model.block={m.block}) cannot pretrain: LSMCL's "
                          "random token masks remove the grid. Use model.pool=avg1d (or an S5 model)")


def feature_cache_meta(cfg: Config, split: str) -> dict:
    """What a frozen-feature cache of ``split`` must have been extracted with for ``cfg`` to train or
    evaluate on it: the encoder, its input, how the clips were cut and from which data (a digest of
    the shards' manifest, so a cache still serves after the shards moved or are gone). Written into
    the cache's ``<split>.beton.json`` by ``tools/extract_features.py`` and compared with the config by
    :func:`feature_cache_stale` (a reused cache directory must not feed another dataset's tokens)."""
    from s5video.trainer.evaluate import eval_clip_spec
    d, m = cfg.data, cfg.model
    meta = {"task": m.task, "encoder": m.encoder, "encoder_weights": m.encoder_weights, "frame_tokens": m.frame_tokens,
            "spatial_grid": m.spatial_grid, "image_size": d.image_size, "frames": d.frames, "sampling": d.sampling,
            "segment_seconds": d.segment_seconds if d.sampling == "segments" else None,
            "clip_seconds": d.clip_seconds, "manifest": _manifest_digest(d.shards)}
    if split == d.train_split:
        meta["clips"] = "all_segments" if d.sampling == "segments" else "windows"
        if m.task == "multilabel" and d.sampling != "segments":
            meta["window_labels"] = d.window_labels
    else:
        spec = eval_clip_spec(d)
        meta["clips"] = spec.mode if spec.mode == "windows" else ("segments" if spec.sampling == "segments"
                                                                   else spec.val_clip)
        if spec.mode == "windows":
            meta["stride_seconds"] = spec.stride
    return meta


def _manifest_digest(shards: str) -> str | None:
    """A digest of the shards' manifest (their splits, samples and classes): the same data wherever the
    shards are, or were - a cache may outlive them. None when there is no readable manifest. A local
    manifest is read once per version (path, mtime, size); a remote one at each call."""
    path = os.path.join(shards, "manifest.json") if shards and "://" not in shards else None
    if path and os.path.isfile(path):
        st = os.stat(path)
        return _digest_of(shards, st.st_mtime_ns, st.st_size)
    return _digest_of.__wrapped__(shards, 0, 0)


@functools.lru_cache(maxsize=32)
def _digest_of(shards: str, mtime_ns: int, size: int) -> str | None:
    import hashlib
    try:
        manifest = _manifest(shards)
    except ConfigError:
        return None
    return hashlib.sha1(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16] if manifest else None


_CACHE_KEYS = {"task": "model.task", "encoder": "model.encoder", "encoder_weights": "model.encoder_weights",
               "frame_tokens": "model.frame_tokens", "spatial_grid": "model.spatial_grid",
               "image_size": "data.image_size", "frames": "data.frames", "sampling": "data.sampling",
               "segment_seconds": "data.segment_seconds", "clip_seconds": "data.clip_seconds",
               "manifest": "data.shards", "clips": "data.eval_clip", "window_labels": "data.window_labels",
               "stride_seconds": "data.eval_stride_seconds"}


def feature_cache_stale(cfg: Config, split: str) -> str | None:
    """Why the cache of ``split`` in ``data.features`` cannot serve ``cfg`` (missing, or extracted with
    other settings - one ``key: X in the config, Y in the cache`` per difference), or None when it can."""
    from s5video.data.features import feature_path
    path = feature_path(cfg.data.features, split)
    if not os.path.exists(path) or not os.path.exists(path + ".json"):
        return f"no cache for split {split!r} at {path}"
    meta = json.loads(Path(path + ".json").read_text())
    want = feature_cache_meta(cfg, split)
    if cfg.data.sampling != "segments":
        meta.setdefault("sampling", "window")
    if str(meta.get("encoder", "")).startswith("imported:"):  # tools/import_features.py: tokens made elsewhere
        for k in ("encoder", "encoder_weights", "frame_tokens", "spatial_grid", "image_size", "manifest"):
            want.pop(k)
    diffs = []
    for k, v in want.items():
        unknown = k not in meta or (k == "manifest" and v is None)  # an older cache; shards without a manifest
        if unknown or (k == "clip_seconds" and cfg.data.sampling == "segments"):  # segments: no window length
            continue
        got = meta[k]
        if k == "manifest" and got != v:
            diffs.append(f"data.shards: the cache was extracted from other shards (their manifest differs; cache "
                         f"from {meta.get('shards')!r})")
        elif got != v and not (isinstance(v, float) and isinstance(got, (int, float)) and abs(got - v) < 1e-9):
            diffs.append(f"{_CACHE_KEYS[k]}: {v!r} in the config, {got!r} in the cache (extracted with {k}={got})")
    if cfg.model.task == "captioning" and not os.path.exists(path + ".captions.json"):
        diffs.append("model.task: the cache holds no captions")
    if diffs:
        return f"the cache {path} was extracted with other settings ({'; '.join(diffs)})"
    return None


def _check_features(cfg: Config) -> None:
    if not cfg.data.features:
        raise ConfigError("data.features: data.backend=features needs the cache directory written by "
                          "tools/extract_features.py")
    for key, split in splits_read(cfg).items():
        for s in split.split("+"):
            why = feature_cache_stale(cfg, s)
            if why:
                raise ConfigError(f"data.features: {why} ({key}); write it with python tools/extract_features.py "
                                  f"--config <this config> (every split the run reads), or `submit.py` does it")