"""s5video streaming data: shards -> decoded clips -> batches (CPU or DALI backends)."""
from __future__ import annotations

from s5video.data.base import ClipLoader
from s5video.data.clips import ClipSpec

__all__ = ["ClipLoader", "ClipSpec", "build_loader", "choose_backend", "loader_kwargs"]


def loader_kwargs(cfg, *, mean, std, rank: int = 0, world: int = 1, **overrides) -> dict:
    """:func:`build_loader`'s keyword arguments from a run config (``cfg.data``, ``cfg.model.task``,
    ``cfg.model.num_classes``, ``cfg.run.seed``) and the frame encoder's ``mean``/``std``; the one
    place that maps config keys to loader arguments. ``overrides`` replace any of them (evaluation:
    ``num_workers=0, finite=True``; feature extraction: its batch size)."""
    d = cfg.data
    kw = dict(batch_size=d.batch_size, image_size=d.image_size, mean=mean, std=std, rank=rank, world=world,
              seed=cfg.run.seed, num_workers=d.num_workers, task=cfg.model.task, num_classes=cfg.model.num_classes,
              features=d.features, cache_dir=d.cache_dir, cache_gb=d.cache_size_gb)
    kw.update(overrides)
    return kw


def choose_backend(backend: str, source: str) -> str:
    """Resolve ``data.backend``: ``auto`` = ``dali-mixed`` on a GPU (DALI installed), otherwise ``cpu``
    (on CPU the PyAV stream is faster than DALI's CPU decoder - docs/benchmarks.md - and it skips
    undecodable samples, which a DALI batch cannot), and ``cpu`` for remote (http://...) shards. ``dali`` without a GPU = ``dali-cpu`` (VP9 shards
    only: DALI's CPU decoder cannot decode H.264). Returns one of ``cpu``, ``dali-cpu``, ``dali-mixed``."""
    import torch

    from s5video.data.dali import dali_available

    if backend == "cpu":
        return "cpu"
    if backend == "dali":
        if not dali_available():
            raise ValueError("data.backend: 'dali' but nvidia-dali is not installed (pip install -e '.[dali]')")
        return "dali-mixed" if torch.cuda.is_available() else "dali-cpu"
    if backend != "auto":
        raise ValueError(f"data.backend: {backend!r} not allowed; allowed values: 'auto', 'dali', 'cpu', 'features'")
    if "://" in source:  # remote shards: streamed (and cached) by the cpu backend; DALI reads local files
        return "cpu"
    return "dali-mixed" if dali_available() and torch.cuda.is_available() else "cpu"


def build_loader(backend: str, source: str, split: str, spec: ClipSpec, **kw) -> ClipLoader:
    """A :class:`data.loader.VideoLoader` or :class:`data.dali.DaliVideoLoader` for ``backend``
    (see :func:`choose_backend`), or a :class:`data.features.FeatureLoader` for ``features`` (pass
    ``features=`` the cache directory; ``split``'s file in it); keyword arguments are the loaders'
    (:func:`loader_kwargs`: batch_size, image_size, mean, std, rank, world, seed, task, num_classes,
    num_workers, finite; cache_dir and cache_gb for remote shards on the cpu backend). DALI runs
    ``num_workers`` CPU threads.

    Raises:
        ValueError: a setting the chosen backend cannot honour (DALI: remote shards, a finite pass).
    """
    if backend == "features":
        from s5video.data.features import FeatureLoader, feature_path
        if not kw.get("features"):
            raise ValueError("data.backend: 'features' needs data.features (a directory from tools/extract_features.py)")
        finite = kw.get("finite", spec.mode != "train")
        return FeatureLoader(feature_path(kw["features"], split), kw["batch_size"], shuffle=not finite,
                             seed=kw.get("seed", 0), rank=kw.get("rank", 0), world=kw.get("world", 1), finite=finite,
                             num_workers=max(1, kw.get("num_workers", 1)))
    kw.pop("features", None)
    chosen = choose_backend(backend, source)
    if chosen == "cpu":
        from s5video.data.loader import VideoLoader
        return VideoLoader(source, split, spec, **kw)
    from s5video.data.dali import DaliVideoLoader
    if "://" in source:
        raise ValueError(f"data.backend={backend}: DALI reads shard files from a local disk, and data.shards is "
                         f"{source}; use data.backend=cpu for remote shards")
    if kw.pop("finite", False):
        raise ValueError(f"data.backend={backend}: a DALI pipeline cannot make one finite pass (every sample once, "
                         "the last batch short); evaluation and feature extraction read with the cpu backend")
    kw.pop("cache_dir", None)  # the remote-shard cache: local shards only here (refused above otherwise)
    kw.pop("cache_gb", None)
    num_threads = max(1, kw.pop("num_workers", 2))
    return DaliVideoLoader(source, split, spec, device="mixed" if chosen == "dali-mixed" else "cpu",
                           num_threads=num_threads, **kw)
