"""VideoMamba video encoder (Li et al. 2024, "VideoMamba: State Space Model for Efficient Video
Understanding"), the backbone of seed 004's Charades classifier and captioner.

video (B, T, 3, H, W) -> 3-D patch embedding (1 x 16 x 16 tubelets) -> CLS token + spatial and
temporal position embeddings -> ``depth`` residual blocks ``x + BiMamba(RMSNorm(x))`` over the
spatial-first token sequence [CLS, frame 0's patches, frame 1's patches, ...] -> RMSNorm:
hidden states (B, 1 + T * h * w, D), CLS first.

Parameter names follow the public VideoMamba checkpoints (``patch_embed.proj``, ``cls_token``,
``pos_embed``, ``temporal_pos_embedding``, ``layers.i.mixer.{in_proj, conv1d[_b], x_proj[_b],
dt_proj[_b], A_log, A_b_log, D[_b], out_proj}``, ``layers.i.norm``, ``norm_f``), so such a file
loads directly (the classification ``head`` is dropped; position embeddings of another frame
count or image size are interpolated). The selective scan is the ``mamba-ssm`` CUDA kernel when
that package is installed and the input is on a GPU, else ``mambapy``'s parallel scan.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

FLAVOURS = {  # (embed dim D, depth); VideoMamba Table 1: Ti 7M, S 26M, M 74M parameters
    "tiny": (192, 24), "small": (384, 24), "middle": (576, 32), "debug": (32, 2),
}


def selective_scan(x, dt, A, B, C, D):
    """Mamba's selective scan (Gu & Dao 2023, eq. 2a-2b with ZOH on A, Euler on B), per channel e:
    ``h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t``, ``y_t = C_t . h_t + D x_t``.

    x, dt (B, L, E) (dt after softplus); A (E, N) negative; B, C (B, L, N); D (E,) -> y (B, L, E).
    """
    if x.is_cuda:
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: PLC0415
        except ImportError:
            selective_scan_fn = None
        if selective_scan_fn is not None:  # kernel layout: (B, E, L) / (B, N, L)
            y = selective_scan_fn(x.transpose(1, 2).contiguous(), dt.transpose(1, 2).contiguous(), A,
                                  B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(), D.float())
            return y.transpose(1, 2)  # (B, L, E)
    from mambapy.pscan import pscan  # noqa: PLC0415
    dA = torch.exp(dt.unsqueeze(-1) * A)  # (B, L, E, N)
    dBx = dt.unsqueeze(-1) * B.unsqueeze(2) * x.unsqueeze(-1)  # (B, L, E, N)
    h = pscan(dA, dBx)  # (B, L, E, N)
    return (h @ C.unsqueeze(-1)).squeeze(-1) + D * x  # (B, L, E)


class BiMamba(nn.Module):
    """Bidirectional Mamba mixer (VideoMamba/Vim "bimamba v2"), (B, L, D) -> (B, L, D): one input
    projection to (x, z); a forward and a backward (time-reversed) branch, each a causal depthwise
    conv + SiLU + selective scan with its own parameters, gated by SiLU(z); the branches are summed
    and projected back."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        e, self.dt_rank, self.d_state = expand * d_model, math.ceil(d_model / 16), d_state
        self.in_proj = nn.Linear(d_model, 2 * e, bias=False)
        self.out_proj = nn.Linear(e, d_model, bias=False)
        for sfx, a_name in (("", "A_log"), ("_b", "A_b_log")):
            setattr(self, f"conv1d{sfx}", nn.Conv1d(e, e, d_conv, groups=e, padding=d_conv - 1))
            setattr(self, f"x_proj{sfx}", nn.Linear(e, self.dt_rank + 2 * d_state, bias=False))
            dt_proj = nn.Linear(self.dt_rank, e)
            dt = torch.exp(torch.rand(e) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
            with torch.no_grad():  # softplus(bias) in [1e-3, 0.1], as Mamba initialises dt
                dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            setattr(self, f"dt_proj{sfx}", dt_proj)
            setattr(self, a_name, nn.Parameter(torch.log(torch.arange(1, d_state + 1.0)).repeat(e, 1)))  # (E, N)
            setattr(self, f"D{sfx}", nn.Parameter(torch.ones(e)))

    def branch(self, x: torch.Tensor, z: torch.Tensor, sfx: str) -> torch.Tensor:
        """One direction: x, z (B, L, E) in that direction's time order -> (B, L, E)."""
        L = x.shape[1]
        x = F.silu(getattr(self, f"conv1d{sfx}")(x.transpose(1, 2))[..., :L].transpose(1, 2))  # (B, L, E) causal conv
        dt, B, C = getattr(self, f"x_proj{sfx}")(x).split([self.dt_rank, self.d_state, self.d_state], -1)
        dt_proj = getattr(self, f"dt_proj{sfx}")
        dt = F.softplus(dt_proj(dt))  # (B, L, E), dt_proj's bias included
        A = -torch.exp(getattr(self, "A_log" if not sfx else "A_b_log").float())  # (E, N)
        return selective_scan(x, dt, A, B, C, getattr(self, f"D{sfx}")) * F.silu(z)  # (B, L, E)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(h).chunk(2, dim=-1)  # (B, L, E) each
        fwd = self.branch(x, z, "")  # (B, L, E)
        bwd = self.branch(x.flip(1), z.flip(1), "_b").flip(1)  # (B, L, E)
        return self.out_proj(fwd + bwd)  # (B, L, D)


class Block(nn.Module):
    """Pre-norm residual block: x + BiMamba(RMSNorm(x)), (B, L, D)."""

    def __init__(self, d_model: int, d_state: int = 16):
        super().__init__()
        self.mixer = BiMamba(d_model, d_state)
        self.norm = nn.RMSNorm(d_model, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mixer(self.norm(x))  # (B, L, D)


class VideoMamba(nn.Module):
    """The VideoMamba backbone: video (B, T, 3, H, W) -> hidden states (B, 1 + T * h * w, D), CLS
    first, then frame-major (spatial-first) patch tokens; h = H / 16, w = W / 16.

    ``num_frames`` / ``img_size`` size the position embeddings; other inputs interpolate them
    (linear in time, bicubic in space). Raises ValueError when H or W is not a multiple of 16.
    """

    def __init__(self, embed_dim: int = 576, depth: int = 32, d_state: int = 16, patch_size: int = 16,
                 num_frames: int = 16, img_size: int = 224):
        super().__init__()
        self.patch_size, self.dim = patch_size, embed_dim
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(3, embed_dim, (1, patch_size, patch_size), (1, patch_size, patch_size))
        side = img_size // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, side * side + 1, embed_dim) * 0.02)
        self.temporal_pos_embedding = nn.Parameter(torch.zeros(1, num_frames, embed_dim))
        self.layers = nn.ModuleList(Block(embed_dim, d_state) for _ in range(depth))
        self.norm_f = nn.RMSNorm(embed_dim, eps=1e-5)

    def position_embeddings(self, T: int, h: int, w: int):
        """(cls (1, 1, D), spatial (1, h*w, D), temporal (1, T, D)) resized to the input's grid."""
        cls, sp = self.pos_embed[:, :1], self.pos_embed[:, 1:]  # (1, 1, D), (1, s*s, D)
        s = round(sp.shape[1] ** 0.5)
        if (h, w) != (s, s):
            sp = F.interpolate(sp.reshape(1, s, s, -1).permute(0, 3, 1, 2), (h, w), mode="bicubic",
                               align_corners=False).permute(0, 2, 3, 1).reshape(1, h * w, -1)  # (1, h*w, D)
        tp = self.temporal_pos_embedding  # (1, T0, D)
        if tp.shape[1] != T:
            tp = F.interpolate(tp.transpose(1, 2), T, mode="linear", align_corners=False).transpose(1, 2)
        return cls, sp, tp

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        B, T, _, H, W = video.shape
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"VideoMamba: frame size {H}x{W} is not a multiple of the patch size {self.patch_size}")
        x = self.patch_embed.proj(video.transpose(1, 2))  # (B, D, T, h, w)
        h, w = x.shape[-2:]
        cls_pos, sp, tp = self.position_embeddings(T, h, w)
        x = x.permute(0, 2, 3, 4, 1).reshape(B, T, h * w, self.dim) + sp.unsqueeze(1) + tp.unsqueeze(2)  # (B, T, h*w, D)
        cls = (self.cls_token + cls_pos).expand(B, -1, -1)  # (B, 1, D)
        x = torch.cat([cls, x.flatten(1, 2)], 1)  # (B, 1 + T*h*w, D)
        for blk in self.layers:
            x = blk(x)
        return self.norm_f(x)  # (B, 1 + T*h*w, D)


def load_videomamba_weights(model: VideoMamba, path: str) -> None:
    """Load a VideoMamba checkpoint (``.pth``/``.pt`` state dict, possibly under ``model`` or
    ``module``, or ``.safetensors``); ``head.*`` is dropped, position embeddings of another size
    are interpolated. Raises FileNotFoundError, or ValueError naming missing/unexpected keys."""
    from pathlib import Path  # noqa: PLC0415
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"model.encoder_weights: {path} is not a file")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file  # noqa: PLC0415
        sd = load_file(str(p))
    else:
        sd = torch.load(p, map_location="cpu", weights_only=True)
        for key in ("model", "module", "state_dict"):
            if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
                sd = sd[key]
    sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    own = model.state_dict()
    for k in ("pos_embed", "temporal_pos_embedding"):
        if k in sd and sd[k].shape != own[k].shape:
            src = sd[k].float()
            if k == "temporal_pos_embedding":
                sd[k] = F.interpolate(src.transpose(1, 2), own[k].shape[1], mode="linear").transpose(1, 2)
            else:
                s0, s1 = round((src.shape[1] - 1) ** 0.5), round((own[k].shape[1] - 1) ** 0.5)
                grid = F.interpolate(src[:, 1:].reshape(1, s0, s0, -1).permute(0, 3, 1, 2), (s1, s1), mode="bicubic")
                sd[k] = torch.cat([src[:, :1], grid.permute(0, 2, 3, 1).reshape(1, s1 * s1, -1)], 1)
    wrong = [k for k, v in sd.items() if k in own and v.shape != own[k].shape]
    if wrong:
        raise ValueError(f"model.encoder_weights: {path} does not match VideoMamba-{model.dim}x{len(model.layers)}: "
                         f"{wrong[0]} is {tuple(sd[wrong[0]].shape)} in the file, {tuple(own[wrong[0]].shape)} here "
                         f"({len(wrong)} tensors of another shape); pick the encoder flavour of the checkpoint")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"model.encoder_weights: {path} does not match VideoMamba-{model.dim}x{len(model.layers)}: "
                         f"missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected keys "
                         f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
