"""s5video streaming data: shards -> decoded clips -> batches (CPU or DALI backends)."""
from __future__ import annotations

from data.clips import ClipSpec


def choose_backend(backend: str, source: str) -> str:
    """Resolve ``data.backend``: ``auto`` = ``dali-mixed`` on a GPU (DALI installed), otherwise ``cpu``
    (on CPU the PyAV stream is faster than DALI's CPU decoder - docs/benchmarks.md - and it skips
    undecodable samples, which a DALI batch cannot), and ``cpu`` for remote (http://...) shards. ``dali`` without a GPU = ``dali-cpu`` (VP9 shards
    only: DALI's CPU decoder cannot decode H.264). Returns one of ``cpu``, ``dali-cpu``, ``dali-mixed``."""
    import torch

    from data.dali import dali_available

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


def build_loader(backend: str, source: str, split: str, spec: ClipSpec, **kw):
    """A :class:`data.loader.VideoLoader` or :class:`data.dali.DaliVideoLoader` for ``backend``
    (see :func:`choose_backend`), or a :class:`data.features.FeatureLoader` for ``features`` (pass
    ``features=`` the cache directory; ``split``'s file in it); keyword arguments are the loaders'
    (batch_size, image_size, mean, std, rank, world, seed, task, num_classes, num_workers, finite;
    cache_dir and cache_gb for remote shards on the cpu backend)."""
    if backend == "features":
        from data.features import FeatureLoader, feature_path
        if not kw.get("features"):
            raise ValueError("data.backend: 'features' needs data.features (a directory from tools/extract_features.py)")
        finite = kw.get("finite", spec.mode != "train")
        return FeatureLoader(feature_path(kw["features"], split), kw["batch_size"], shuffle=not finite,
                             seed=kw.get("seed", 0), rank=kw.get("rank", 0), world=kw.get("world", 1), finite=finite)
    kw.pop("features", None)
    chosen = choose_backend(backend, source)
    if chosen == "cpu":
        from data.loader import VideoLoader
        return VideoLoader(source, split, spec, **kw)
    from data.dali import DaliVideoLoader
    if "://" in source:
        raise ValueError(f"data.backend={backend}: DALI reads shard files from a local disk, and data.shards is "
                         f"{source}; use data.backend=cpu for remote shards")
    kw.pop("cache_dir", None)
    kw.pop("cache_gb", None)
    kw.pop("num_workers", None)
    kw.pop("finite", None)
    return DaliVideoLoader(source, split, spec, device="mixed" if chosen == "dali-mixed" else "cpu", **kw)
