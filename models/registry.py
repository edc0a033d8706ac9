"""Model registry (timm/open_clip style): ``create_model(name, **kwargs)`` and ``list_models()``.

Every architecture has a full flavour (paper dims) and a ``_debug`` flavour (tiny, for tests).
Keyword arguments override the flavour's defaults; constructors take explicit arguments. Each
name belongs to a family (``family_of``), which :mod:`models.factory` uses to know the
constructor's arguments.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_FAMILY: dict[str, str] = {}


def register_model(name: str, family: str | None = None, **defaults):
    """Decorator: register ``fn`` under ``name`` (family: default ``name`` without ``_debug``)
    with default keyword arguments."""
    def deco(fn: Callable[..., nn.Module]):
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        _MODELS[name] = lambda **kw: fn(**{**defaults, **kw})
        _FAMILY[name] = family or name.removesuffix("_debug")
        return fn
    return deco


def list_models() -> list[str]:
    return sorted(_MODELS)


def family_of(name: str) -> str:
    """The architecture family of a registered name (e.g. ``"s5_debug"`` -> ``"s5"``)."""
    if name not in _FAMILY:
        raise ValueError(f"model.name: {name!r} not allowed; allowed values: {', '.join(list_models())}")
    return _FAMILY[name]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; raises ValueError naming the known models for an unknown name."""
    family_of(name)
    return _MODELS[name](**kwargs)


def _lazy(module: str, name: str) -> Callable[..., nn.Module]:
    """A constructor that imports ``module`` on first use (e.g. mambapy, transformers only when asked)."""
    def make(**kw):
        import importlib  # noqa: PLC0415
        return getattr(importlib.import_module(module), name)(**kw)
    return make


_vis4mer = _lazy("s5video.models.vis4mer", "ViS4mer")
_s5 = _lazy("s5video.models.s5", "S5")
_attention = _lazy("s5video.models.baselines", "make_attention_baseline")
_bimamba = _lazy("s5video.models.baselines", "BiMambaDecoder")
_captioner = _lazy("s5video.models.captioner", "GPT2Captioner")
_mlp_head = _lazy("s5video.models.heads", "MLPHead")


FULL = dict(num_classes=400, d_model=1024, depth=3)
DEBUG = dict(num_classes=5, d_model=64, depth=3, dropout=0.0)
register_model("vis4mer", **FULL, d_state=64)(_vis4mer)
register_model("vis4mer_debug", **DEBUG, d_state=8)(_vis4mer)
register_model("s5", **FULL, d_state=64, keep_ratio=0.5)(_s5)
register_model("s5_debug", **DEBUG, d_state=8, keep_ratio=0.5)(_s5)
register_model("lst", **FULL, mixer="attention")(_attention)
register_model("lst_debug", **DEBUG, mixer="attention", num_heads=2)(_attention)
register_model("lst_full", **FULL, mixer="attention", materialize=True)(_attention)  # the paper's LST: L x L formed
register_model("lst_full_debug", **DEBUG, mixer="attention", materialize=True, num_heads=2)(_attention)
register_model("performer", **FULL, mixer="performer", num_features=256)(_attention)
register_model("performer_debug", **DEBUG, mixer="performer", num_heads=2, num_features=16)(_attention)
register_model("orthoformer", **FULL, mixer="orthoformer", num_landmarks=128)(_attention)
register_model("orthoformer_debug", **DEBUG, mixer="orthoformer", num_heads=2, num_landmarks=8)(_attention)
# VideoMamba's bidirectional Mamba block as a decoder over frame tokens (the videomamba_* names are video encoders)
register_model("bimamba", num_classes=400, d_model=192, depth=24)(_bimamba)
register_model("bimamba_debug", num_classes=5, d_model=32, depth=2, d_state=8)(_bimamba)
# seed 004: an MLP head over a frozen video encoder's hidden states (d_model = the encoder's width, set by the factory)
register_model("mlp_head", num_classes=157, d_model=576, hidden=(1024, 1024), dropout=0.7)(_mlp_head)
register_model("mlp_head_debug", num_classes=5, d_model=32, hidden=(16,), dropout=0.0)(_mlp_head)
# seed 004: GPT-2 (small: 12 blocks x 768) cross-attending to the video tokens
register_model("gpt2_captioner", d_model=576, n_layer=12, n_embd=768)(_captioner)
register_model("gpt2_captioner_debug", d_model=32, n_layer=2, n_embd=32, max_tokens=48)(_captioner)
