"""A trained model in one safetensors file, usable without DeepSpeed: the decoder's fp32 weights,
the resolved run config and the class names (``tools/export.py`` writes it).

Loading rebuilds the decoder through :func:`models.factory.build_model` from the stored config,
and the frozen frame encoder from its name (its weights are not stored: the packaged
EfficientNet-Lite0, or a local ViT checkpoint given at load time or recorded in the config).

    model = load_exported("model.safetensors")
    logits = model(video)          # video (B, T, 3, S, S) normalised with model.encoder.mean/std
    model.classes, model.config    # class names; the run's resolved config (dict)
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from s5video.models.encoders import create_encoder
from s5video.models.factory import build_model, head_classes

FORMAT = "s5video-export/1"


def save_exported(path: str | Path, weights: dict[str, torch.Tensor], config: dict, classes: list[str],
                  **info: str) -> None:
    """Write ``weights`` (the decoder's state dict) with the config and class names as metadata.
    Tied tensors (one storage under two names, e.g. GPT-2's ``lm_head.weight`` = ``wte.weight``) are
    stored once; the metadata's ``aliases`` restores the other names on load."""
    from safetensors.torch import save_file
    tensors, aliases, seen = {}, {}, {}
    for k, v in weights.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape)) if v.numel() else None
        if key is not None and key in seen:
            aliases[k] = seen[key]
            continue
        if key is not None:
            seen[key] = k
        tensors[k] = v.detach().to("cpu").contiguous()
    meta = {"format": FORMAT, "config": json.dumps(config), "classes": json.dumps(classes),
            "aliases": json.dumps(aliases), **{k: str(v) for k, v in info.items()}}
    save_file(tensors, str(path), metadata=meta)


class ExportedModel(nn.Module):
    """Frozen encoder + decoder of an exported run. forward(video (B, T, 3, S, S)) -> (B, C) logits
    (B, 1 for regression); ``decode(tokens (B, L, D), grid)`` runs the decoder alone."""

    def __init__(self, decoder: nn.Module, encoder: nn.Module, config: dict, classes: list[str], info: dict):
        super().__init__()
        self.decoder, self.encoder = decoder.eval(), encoder
        self.config, self.classes, self.info = config, classes, info
        self.task = config["model"]["task"]

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, grid=None) -> torch.Tensor:
        return self.decoder(tokens, grid=grid)  # (B, C)

    @torch.no_grad()
    def forward(self, video: torch.Tensor) -> torch.Tensor:
        tokens, grid = self.encoder(video)  # (B, L, D), (T, H', W')
        return self.decode(tokens, grid)

    @torch.no_grad()
    def caption(self, video: torch.Tensor) -> list[str]:
        """Captions of clips (B, T, 3, S, S) (a captioning export), decoded as the run was configured
        (``model.caption_beams``, ``model.caption_max_tokens``). Raises ValueError for another task."""
        if self.task != "captioning":
            raise ValueError(f"this export is a {self.task} model, not a captioner")
        tokens, _ = self.encoder(video)  # (B, L, D)
        return self.decoder.caption(tokens)


def _incomplete(path, e: Exception) -> ValueError:
    return ValueError(f"{path}: not a complete safetensors file ({str(e).splitlines()[0][:120]}); a truncated copy? "
                      "Export it again with tools/export.py RUN_DIR --out FILE")


def load_exported(path: str | Path, encoder_weights: str | None = None, device: str | torch.device = "cpu"
                  ) -> ExportedModel:
    """Rebuild an exported model on ``device``. ``encoder_weights`` overrides the config's local
    encoder checkpoint. Raises ValueError for a file that is not an s5video export."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    if not Path(path).is_file():
        raise OSError(f"{path}: no such file")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors' SafetensorError: a truncated or foreign file
        raise _incomplete(path, e) from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not an s5video export (format {meta.get('format')!r}, expected {FORMAT!r}); "
                         "write one with tools/export.py RUN_DIR --out FILE")
    config, classes = json.loads(meta["config"]), json.loads(meta["classes"])
    m = config["model"]
    try:
        weights = load_file(str(path))
    except Exception as e:  # the header reads but the tensors are cut short
        raise _incomplete(path, e) from None
    weights.update({alias: weights[name] for alias, name in json.loads(meta.get("aliases", "{}")).items()})
    encoder = create_encoder(m["encoder"], encoder_weights or m.get("encoder_weights"), m.get("frame_tokens", "patch"),
                             m.get("spatial_grid", 0))
    decoder = build_model(SimpleNamespace(**m), encoder.dim,
                          head_classes(config["run"]["mode"], m["task"], m.get("num_classes", 0), classes))
    decoder.load_state_dict(weights)  # strict: every tensor of the run, nothing else
    info = {k: v for k, v in meta.items() if k not in ("config", "classes", "aliases")}
    return ExportedModel(decoder, encoder, config, classes, info).to(device)
