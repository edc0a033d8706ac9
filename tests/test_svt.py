"""SVT (seed 004's first video encoder): a checkpoint in SVT's own layout - TimeSformer names under
`teacher`, `module.backbone.` prefixes, a projection head - loads into our TimesformerModel and
reproduces the source network's hidden states; another width is refused naming the tensor."""
from __future__ import annotations

import pytest
import torch

from s5video.models.encoders import create_encoder
from s5video.models.svt import build_timesformer

# transformers' TimesformerModel names -> SVT's (kahnchana/svt models/timesformer.py), written out here
HF_TO_SVT = [("embeddings.cls_token", "cls_token"), ("embeddings.position_embeddings", "pos_embed"),
             ("embeddings.time_embeddings", "time_embed"), ("embeddings.patch_embeddings.projection.", "patch_embed.proj."),
             ("encoder.layer.", "blocks."), (".layernorm_before.", ".norm1."), (".layernorm_after.", ".norm2."),
             (".temporal_attention.attention.qkv.", ".temporal_attn.qkv."),
             (".temporal_attention.output.dense.", ".temporal_attn.proj."),
             (".attention.attention.qkv.", ".attn.qkv."), (".attention.output.dense.", ".attn.proj."),
             (".temporal_layernorm.", ".temporal_norm1."), (".temporal_dense.", ".temporal_fc."),
             (".intermediate.dense.", ".mlp.fc1."), (".output.dense.", ".mlp.fc2."), ("layernorm.", "norm.")]


def _svt_layout(model) -> dict:
    out = {}
    for k, v in model.state_dict().items():
        name = k
        for a, b in HF_TO_SVT:
            if a.startswith("."):  # inside a layer's name
                name = name.replace(a, b, 1)
            elif name.startswith(a):  # a top-level name
                name = b + name[len(a):]
        out["module.backbone." + name] = v.clone()
    return out


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(3)
    model = build_timesformer("debug", num_frames=4, image_size=64).eval()
    with torch.no_grad():  # the zero-initialised embeddings of a fresh model would hide a wrong mapping
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_svt_checkpoint_loads_and_reproduces_the_source(source, tmp_path):
    sd = _svt_layout(source)
    assert "module.backbone.blocks.1.temporal_attn.qkv.weight" in sd and "module.backbone.norm.weight" in sd
    student = {k: torch.zeros_like(v) for k, v in sd.items()}
    path = tmp_path / "kinetics400_vitb_ssl.pth"
    torch.save({"teacher": {**sd, "module.head.mlp.0.weight": torch.randn(8, 32)}, "student": student,
                "epoch": 20}, path)
    video = torch.randn(2, 4, 3, 64, 64)
    with torch.no_grad():
        ref = source(pixel_values=video).last_hidden_state  # (2, 1 + 16*4, 32), patch-major
    h = w = 4
    patches = ref[:, 1:].reshape(2, h * w, 4, 32).permute(0, 2, 1, 3).reshape(2, 4 * h * w, 32)  # frame-major
    for tokens in ("cls", "cls+patch", "patch"):
        enc = create_encoder("svt_debug", str(path), tokens)
        out, grid = enc(video)
        want = {"cls": ref[:, :1], "cls+patch": torch.cat([ref[:, :1], patches], 1), "patch": patches}[tokens]
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
        assert grid == ((4, h, w) if tokens == "patch" else None)
        assert not any(p.requires_grad for p in enc.parameters())
    # 8 frames through the 4-frame time embedding: interpolated (nearest) as SVT's own forward does
    long = torch.randn(1, 8, 3, 64, 64)
    with torch.no_grad():
        ref8 = source(pixel_values=long).last_hidden_state[:, :1]
    torch.testing.assert_close(create_encoder("svt_debug", str(path), "cls")(long)[0], ref8, rtol=1e-5, atol=1e-5)


def test_svt_checkpoint_of_another_width_is_refused(tmp_path):
    from transformers import TimesformerConfig, TimesformerModel
    wide = TimesformerModel(TimesformerConfig(image_size=64, patch_size=16, num_frames=4, hidden_size=48,
                                              num_hidden_layers=2, num_attention_heads=2, intermediate_size=192))
    path = tmp_path / "wide.pth"
    torch.save({"teacher": _svt_layout(wide)}, path)
    with pytest.raises(ValueError, match=r"another shape.*embeddings\.cls_token \(1, 1, 48\)"):
        create_encoder("svt_debug", str(path), "cls")
    torch.save({"model": {"blocks.0.attn.qkv.weight": torch.zeros(1), "strange.tensor": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="strange.tensor"):
        create_encoder("svt_debug", str(path), "cls")
