"""Frozen frame encoders: the packaged EfficientNet-Lite0 weights classify real frames sensibly;
token shapes; the ViT path loads a local transformers checkpoint."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

from s5video.models.encoders import EfficientNetLite0, ViTEncoder, create_encoder

# ImageNet-1k class ids (standard label map)
SUIT, WINDSOR_TIE, STREETCAR = 834, 906, 829


def _frame(src: str, t: float, size: int = 224) -> torch.Tensor:
    raw = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-ss", str(t), "-i", src, "-frames:v", "1",
                          "-vf", f"scale={size}:{size}", "-pix_fmt", "rgb24", "-f", "rawvideo", "-"],
                         capture_output=True, check=True).stdout
    return torch.from_numpy(np.frombuffer(raw, np.uint8).reshape(size, size, 3).copy()).permute(2, 0, 1).float() / 255


@pytest.fixture(scope="module")
def effnet():
    return EfficientNetLite0()


def _normalise(enc, x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(enc.mean)[:, None, None]) / torch.tensor(enc.std)[:, None, None]


def test_pretrained_efficientnet_classifies_real_frames(effnet, demo_footage):
    talking = torch.stack([_frame(demo_footage["carphone"], t) for t in (0.5, 1.5, 2.5)])
    street = _frame(demo_footage["bikes"], 5.0)[None]
    top5 = effnet.classify(_normalise(effnet, talking)).topk(5).indices
    for row in top5.tolist():  # a man in a suit and tie talking on a car phone
        assert SUIT in row and WINDSOR_TIE in row, row
    assert STREETCAR in effnet.classify(_normalise(effnet, street)).topk(5).indices[0].tolist()
    # the same frames through randomly initialised weights do not find these classes
    from efficientnet_lite_pytorch import EfficientNet
    rnd = EfficientNet.from_name("efficientnet-lite0").eval()
    with torch.no_grad():
        assert not all(SUIT in r for r in rnd(_normalise(effnet, talking)).topk(5).indices.tolist())


def test_efficientnet_tokens_frozen(effnet):
    video = torch.randn(2, 3, 3, 224, 224)
    tokens, grid = effnet(video)
    assert tokens.shape == (2, 3 * 49, 1280) and grid == (3, 7, 7)
    assert not tokens.requires_grad and not any(p.requires_grad for p in effnet.parameters())
    effnet.train()
    assert not effnet.training
    # tokens are usable by a trainable layer's backward (not inference-mode tensors)
    lin = torch.nn.Linear(1280, 2)
    lin(tokens).sum().backward()
    assert lin.weight.grad is not None
    # frame order: frame t's tokens are the t-th block of 49
    t1, _ = effnet(video[:, 1:2])
    torch.testing.assert_close(tokens[:, 49:98], t1, rtol=1e-4, atol=1e-4)


def test_vit_encoder_from_local_checkpoint(tmp_path):
    """Tokens per frame as ViS4mer uses them, against transformers' own ViTModel output: the 4 x 4
    patch grid (default), CLS only, CLS + patches, and per-frame spatial max-pooling (Table 3 sweep)."""
    from transformers import ViTConfig, ViTModel
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                    image_size=64, patch_size=16)
    ref = ViTModel(cfg, add_pooling_layer=False).eval()
    ref.save_pretrained(tmp_path)
    video = torch.randn(2, 3, 3, 64, 64)
    with torch.no_grad():
        h = ref(pixel_values=video.flatten(0, 1)).last_hidden_state.view(2, 3, 17, 32)  # (B, T, 1 + 4*4, D)
    enc = create_encoder("vit_large_patch16_224_in21k", weights=str(tmp_path))
    tokens, grid = enc(video)
    assert tokens.shape == (2, 3 * 16, 32) and grid == (3, 4, 4)  # 16 patch tokens per frame, no CLS
    torch.testing.assert_close(tokens, h[:, :, 1:].reshape(2, 48, 32), rtol=1e-5, atol=1e-5)
    tokens, grid = create_encoder("vit", str(tmp_path), frame_tokens="cls")(video)
    assert grid == (3, 1, 1)
    torch.testing.assert_close(tokens, h[:, :, 0], rtol=1e-5, atol=1e-5)
    tokens, grid = create_encoder("vit", str(tmp_path), frame_tokens="cls+patch")(video)
    assert grid is None
    torch.testing.assert_close(tokens, h.reshape(2, 51, 32), rtol=1e-5, atol=1e-5)
    tokens, grid = create_encoder("vit", str(tmp_path), spatial_grid=2)(video)
    pooled = h[:, :, 1:].reshape(2, 3, 2, 2, 2, 2, 32).amax(dim=(3, 5))  # (B, T, 2, [2], 2, [2], D): 2x2 blocks
    assert grid == (3, 2, 2)
    torch.testing.assert_close(tokens, pooled.reshape(2, 12, 32), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no CLS token"):
        create_encoder("efficientnet_lite0", frame_tokens="cls")
    with pytest.raises(ValueError, match="encoder_weights"):
        ViTEncoder("")
