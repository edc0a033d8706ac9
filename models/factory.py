"""Model assembly from a ``model`` config section: the one place that knows each architecture's
arguments. The trainer calls :func:`build_model` and knows none of them.

``CONFIG_ARGS[family]`` maps the config keys a family reads to its constructor's arguments; a key
whose value is None is not passed, so the registered flavour's default applies (e.g.
``model.pool: null`` = the block's pooling: avg1d for ``model.block=authors`` and S5, max_st for
``paper``). A key a family does not map is not
read for it (e.g. ``model.keep_ratio`` for ``vis4mer``).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from s5video.models.registry import create_model, family_of

_DECODER = {"width": "d_model", "depth": "depth", "dropout": "dropout", "pool": "pool",
            "channel_scaling": "channel_scaling", "block": "block"}
_S4 = {"state_size": "d_state", "kernel": "kernel"}
CONFIG_ARGS: dict[str, dict[str, str]] = {
    "vis4mer": {**_DECODER, **_S4},
    "s5": {**_DECODER, **_S4, "keep_ratio": "keep_ratio", "mask_generator": "mask_generator",
           "gumbel_temperature": "gumbel_temperature", "momentum": "momentum", "selection": "selection"},
    "lst": dict(_DECODER),
    "lst_full": dict(_DECODER),
    "performer": {**_DECODER, "num_features": "num_features"},
    "orthoformer": {**_DECODER, "num_landmarks": "num_landmarks"},
    "bimamba": {"width": "d_model", "depth": "depth", "state_size": "d_state"},
    "mlp_head": {"mlp_layers": "hidden", "dropout": "dropout", "mlp_layernorm": "layernorm"},
    "gpt2_captioner": {"width": "n_embd", "depth": "n_layer", "gpt2": "gpt2", "caption_beams": "num_beams", "caption_max_tokens": "max_tokens"},
}
# model.* keys LSMCL pretraining reads (build_model(pretrain=True)) -> models.lsmcl.LSMCL's arguments
PRETRAIN_ARGS = {"proj_dim": "proj_dim", "momentum": "momentum", "mask_ratio": "mask_ratio",
                 "contrastive_temperature": "temperature"}
INPUT_WIDTH = {"mlp_head", "gpt2_captioner"}  # families that take the encoder's width as d_model (no input projection)


def model_args(model_cfg: Any) -> dict:
    """Constructor keyword arguments of ``model_cfg.name`` from the config section (None values
    left out). Raises ValueError for an unknown name."""
    family = family_of(model_cfg.name)
    return {arg: getattr(model_cfg, key) for key, arg in CONFIG_ARGS[family].items()
            if getattr(model_cfg, key, None) is not None}


def head_classes(mode: str, task: str, num_classes: int, classes: list[str]) -> int:
    """Outputs of the model's head: 0 for pretraining ((B, D_out) features), 1 for regression,
    else ``num_classes`` (0 = the class names' count, at least 1)."""
    if mode == "pretrain":
        return 0
    if task == "regression":
        return 1
    return num_classes or len(classes) or 1


class TokenModel(nn.Module):
    """Frozen-encoder tokens (B, L, D_enc) -> ``proj`` (Linear to the model width, or Identity) ->
    ``temporal``, the registry model over the token sequence (the temporal decoder with its head -
    ViS4mer, S5, LST, ... - or the captioner).

    forward(tokens (B, L, D_enc), grid=(T, H', W') or None) -> (B, num_classes);
    forward_features -> (B, D_out).
    """

    def __init__(self, name: str, in_dim: int, num_classes: int, **kwargs):
        super().__init__()
        self.temporal = create_model(name, num_classes=num_classes, **kwargs)
        width = self.temporal.in_dim
        self.proj = nn.Linear(in_dim, width) if in_dim != width else nn.Identity()
        self.out_dim = self.temporal.out_dim

    def forward_features(self, tokens: torch.Tensor, grid=None) -> torch.Tensor:
        return self.temporal.forward_features(self.proj(tokens), grid)  # (B, D_out)

    def forward(self, tokens: torch.Tensor, grid=None, **kw) -> torch.Tensor:
        """(B, num_classes) logits; a captioner takes ``captions=`` and returns its loss."""
        return self.temporal(self.proj(tokens), grid, **kw)  # (B, num_classes)

    def caption(self, tokens: torch.Tensor, **kw) -> list[str]:
        """Captions of tokens (B, L, D_enc) (a captioning model only; ``num_beams``, ``max_tokens``)."""
        return self.temporal.generate(self.proj(tokens), **kw)

    def update_momentum(self) -> None:
        if hasattr(self.temporal, "update_momentum"):
            self.temporal.update_momentum()


def build_model(model_cfg: Any, in_dim: int, num_classes: int, pretrain: bool = False) -> nn.Module:
    """The model of a ``model`` config section on top of a frozen encoder of width ``in_dim``: a
    :class:`TokenModel`; ``num_classes`` 0 gives the (B, D_out) features. ``pretrain``: that model
    inside :class:`models.lsmcl.LSMCL` (``model.proj_dim``, ``momentum``, ``mask_ratio``,
    ``contrastive_temperature``), whose query encoder is the model (:func:`model_weights`)."""
    args = model_args(model_cfg)
    if family_of(model_cfg.name) in INPUT_WIDTH:
        args["d_model"] = in_dim
    model = TokenModel(model_cfg.name, in_dim, num_classes, **args)
    if not pretrain:
        return model
    from s5video.models.lsmcl import LSMCL
    return LSMCL(model, **{arg: getattr(model_cfg, key) for key, arg in PRETRAIN_ARGS.items()})


# Checkpoint key mapping, used by the trainer (run.init_from) and tools/export.py.
LSMCL_QUERY = "encoder_q."  # an LSMCL pretraining's query encoder: the model it pretrains
MOMENTUM_COPIES = ".s4_hat."  # S5's momentum S4: a copy of the first block's S4, not trained


def model_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The :class:`TokenModel` tensors of a checkpoint's state dict: an LSMCL pretraining's query
    encoder (``encoder_q.*``, prefix removed), else the state dict as it is."""
    if any(k.startswith(LSMCL_QUERY) for k in state_dict):
        return {k[len(LSMCL_QUERY):]: v for k, v in state_dict.items() if k.startswith(LSMCL_QUERY)}
    return dict(state_dict)


def load_model_weights(model: TokenModel, state_dict: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """``model.load_state_dict(model_weights(state_dict), strict=False)``; momentum copies the
    checkpoint lacks (a model pretrained without them) start as a copy of the loaded weights.
    Returns (missing keys, unexpected keys), the momentum copies not counted as missing."""
    missing, unexpected = model.load_state_dict(model_weights(state_dict), strict=False)
    if hasattr(model.temporal, "update_momentum") and any(MOMENTUM_COPIES in k for k in missing):
        model.temporal.update_momentum(0.0)  # S4_hat = S4
        missing = [k for k in missing if MOMENTUM_COPIES not in k]
    return list(missing), list(unexpected)
