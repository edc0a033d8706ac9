"""SVT (Ranasinghe et al. 2022, "Self-supervised Video Transformer"), seed 004's first video
encoder: a TimeSformer-B/16 (Bertasius et al. 2021) with divided space-time attention - per block a
temporal attention over each patch's T positions, then a spatial attention over each frame's
patches, then the MLP - trained without labels on Kinetics-400. Here it is ``transformers``'
``TimesformerModel`` (the same architecture); this module builds it and loads SVT's released
checkpoints into it.

SVT's checkpoint (``kinetics400_vitb_ssl.pth``) holds DINO-style ``teacher`` / ``student`` state
dicts of the TimeSformer ``VisionTransformer`` (``kahnchana/svt`` ``models/timesformer.py``), their
keys possibly prefixed by ``module.`` (DDP), ``backbone.`` (the multi-crop wrapper) or ``model.``
(TimeSformer's own wrapper). The teacher is the one SVT evaluates. Key mapping (layer i)::

    cls_token / pos_embed / time_embed         embeddings.cls_token / .position_embeddings / .time_embeddings
    patch_embed.proj.*                         embeddings.patch_embeddings.projection.*
    blocks.i.norm1 / .norm2                    encoder.layer.i.layernorm_before / .layernorm_after
    blocks.i.attn.qkv / .attn.proj             encoder.layer.i.attention.attention.qkv / .attention.output.dense
    blocks.i.temporal_norm1                    encoder.layer.i.temporal_layernorm
    blocks.i.temporal_attn.qkv / .proj         encoder.layer.i.temporal_attention.attention.qkv / .output.dense
    blocks.i.temporal_fc                       encoder.layer.i.temporal_dense
    blocks.i.mlp.fc1 / .fc2                    encoder.layer.i.intermediate.dense / .output.dense
    norm.*                                     layernorm.*
    head.*                                     (dropped: the SSL projection/classifier head)

The model is built with the checkpoint's own frame count and image size (``time_embed`` (1, T, D),
``pos_embed`` (1, 1 + (S/16)^2, D)); clips of another frame count or size use them interpolated
(nearest), as SVT's and transformers' forward both do - SVT's 8-frame time embedding serves
seed 004's 16- and 32-frame clips that way.
"""
from __future__ import annotations

import re

import torch

# flavour -> (hidden size D, layers, heads); base = ViT-B/16 as SVT trains it
FLAVOURS = {"base": (768, 12, 12), "debug": (32, 2, 2)}
PATCH = 16
_CONTAINERS = ("teacher", "model", "state_dict", "module", "student")
_PREFIXES = ("module.", "backbone.", "model.", "encoder.")
_TOP = {"cls_token": "embeddings.cls_token", "pos_embed": "embeddings.position_embeddings",
        "time_embed": "embeddings.time_embeddings", "patch_embed.proj": "embeddings.patch_embeddings.projection",
        "norm": "layernorm"}
_LAYER = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.qkv": "attention.attention.qkv",
          "attn.proj": "attention.output.dense", "temporal_norm1": "temporal_layernorm",
          "temporal_attn.qkv": "temporal_attention.attention.qkv",
          "temporal_attn.proj": "temporal_attention.output.dense", "temporal_fc": "temporal_dense",
          "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}


def _rename(name: str) -> str | None:
    """transformers' name of SVT's tensor ``name`` (prefixes removed), or None when none applies."""
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", name)
    if m and m.group(2) in _LAYER:
        return f"encoder.layer.{m.group(1)}.{_LAYER[m.group(2)]}.{m.group(3)}"
    base, _, leaf = name.rpartition(".")
    if name in _TOP:  # the embeddings are parameters of their own
        return _TOP[name]
    return f"{_TOP[base]}.{leaf}" if base in _TOP else None


def build_timesformer(flavour: str = "base", num_frames: int = 8, image_size: int = 224):
    """A ``transformers.TimesformerModel`` of ``flavour`` (:data:`FLAVOURS`): divided space-time
    attention, patch 16, LayerNorm eps 1e-6 and qkv bias as SVT's ``vit_base_patch16_224``.
    Input ``pixel_values`` (B, T, 3, H, W); output hidden states (B, 1 + (H/16)(W/16) T, D), the
    patch tokens patch-major (each patch's T frames together). Raises ValueError for another flavour."""
    from transformers import TimesformerConfig, TimesformerModel

    if flavour not in FLAVOURS:
        raise ValueError(f"SVT flavour {flavour!r} not allowed; allowed values: {', '.join(FLAVOURS)}")
    dim, depth, heads = FLAVOURS[flavour]
    cfg = TimesformerConfig(image_size=image_size, patch_size=PATCH, num_frames=num_frames, hidden_size=dim,
                            num_hidden_layers=depth, num_attention_heads=heads, intermediate_size=4 * dim,
                            layer_norm_eps=1e-6, qkv_bias=True, attention_type="divided_space_time",
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return TimesformerModel(cfg)


def svt_state_dict(checkpoint: dict) -> dict[str, torch.Tensor]:
    """SVT's tensors of a loaded checkpoint, renamed to ``TimesformerModel``'s (module docstring);
    the ``head.*`` tensors are dropped. Raises ValueError naming a key no rule maps."""
    sd = checkpoint
    for key in _CONTAINERS:  # the teacher first: the network SVT evaluates
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    out = {}
    for key, value in sd.items():
        name = key
        while name.startswith(_PREFIXES):
            name = name.split(".", 1)[1]
        if name.startswith("head.") or name.startswith("head_"):
            continue
        target = _rename(name)
        if target is None:
            raise ValueError(f"SVT checkpoint: no TimeSformer tensor is named {key!r}")
        out[target] = value
    return out


def load_svt(path: str, flavour: str = "base"):
    """A :func:`build_timesformer` model with SVT's weights from the file ``path`` (module
    docstring), built for the checkpoint's frame count and image size.

    Raises:
        ValueError: a tensor of another width than the flavour's (named), or tensors missing or left over.
    """
    sd = svt_state_dict(torch.load(path, map_location="cpu", weights_only=False))
    time = sd.get("embeddings.time_embeddings")
    pos = sd.get("embeddings.position_embeddings")
    if time is None or pos is None:
        raise ValueError(f"SVT checkpoint {path}: no time_embed / pos_embed tensor")
    side = int(round((pos.shape[1] - 1) ** 0.5))
    model = build_timesformer(flavour, num_frames=time.shape[1], image_size=side * PATCH)
    own = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (svt_{flavour}: {tuple(own[k].shape)})" for k, v in sd.items()
             if k in own and v.shape != own[k].shape]
    if wrong:
        raise ValueError(f"SVT checkpoint {path}: tensors of another shape - another width or depth than "
                         f"svt_{flavour} (D = {FLAVOURS[flavour][0]}): {', '.join(wrong[:3])}")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"SVT checkpoint {path}: missing {sorted(missing)[:6]}, unexpected {sorted(unexpected)[:6]}")
    return model
