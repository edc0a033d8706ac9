"""Model registry (timm/open_clip style): ``create_model(name, **kwargs)`` and ``list_models()``.

Every architecture has a full flavour (paper dims, width 1024) and a ``_debug`` flavour (tiny, for
tests). Keyword arguments override the flavour's defaults; constructors take explicit arguments.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str, **defaults):
    """Decorator: register ``fn`` under ``name`` with default keyword arguments."""
    def deco(fn: Callable[..., nn.Module]):
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        _MODELS[name] = lambda **kw: fn(**{**defaults, **kw})
        return fn
    return deco


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; raises ValueError naming the known models for an unknown name."""
    if name not in _MODELS:
        raise ValueError(f"model.name: {name!r} not allowed; allowed values: {', '.join(list_models())}")
    return _MODELS[name](**kwargs)


def _vis4mer(**kw):
    from models.vis4mer import ViS4mer  # noqa: PLC0415
    return ViS4mer(**kw)


def _s5(**kw):
    from models.s5 import S5  # noqa: PLC0415
    return S5(**kw)


def _lst(**kw):
    from models.baselines import make_lst  # noqa: PLC0415
    return make_lst(**kw)


def _videomamba(**kw):
    from models.baselines import VideoMambaClassifier  # noqa: PLC0415
    return VideoMambaClassifier(**kw)


FULL = dict(num_classes=400, d_model=1024, depth=3)
DEBUG = dict(num_classes=5, d_model=64, depth=3)
register_model("vis4mer", **FULL, d_state=64)(_vis4mer)
register_model("vis4mer_debug", **DEBUG, d_state=8, dropout=0.0)(_vis4mer)
register_model("s5", **FULL, d_state=64, keep_ratio=0.5)(_s5)
register_model("s5_debug", **DEBUG, d_state=8, dropout=0.0, keep_ratio=0.5)(_s5)
register_model("lst", **FULL)(_lst)
register_model("lst_debug", **DEBUG, dropout=0.0, num_heads=2)(_lst)
register_model("videomamba", num_classes=400, d_in=1024, d_model=192, depth=24)(_videomamba)
register_model("videomamba_debug", num_classes=5, d_in=64, d_model=32, depth=2, d_state=8)(_videomamba)
