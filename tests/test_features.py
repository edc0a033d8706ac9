"""FFCV frozen-feature cache: tokens read back through ffcv's Loader equal the encoder's on-the-fly
output for the same windows."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from data import build_loader
from data.clips import ClipSpec
from data.loader import VideoLoader
from models.encoders import EfficientNetLite0

REPO = Path(__file__).resolve().parents[1]


def test_cached_features_equal_on_the_fly(demo_shards, tmp_path):
    out = tmp_path / "val.beton"
    r = subprocess.run([sys.executable, "tools/extract_features.py", "--config", "configs/demo_finetune.yaml",
                        "--split", "val", "--out", str(out), f"data.shards={demo_shards}", "data.image_size=64",
                        "data.frames=4", "data.clip_seconds=2.0", "data.eval_stride_seconds=1.0"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    cached = {}
    for b in build_loader("features", "", "val", ClipSpec(mode="val"), batch_size=4, features=str(out)):
        for vid, tok, lab, bnd in zip(b["video_id"], b["tokens"], b["label"], b["bounds"]):
            cached[(vid, round(float(bnd[0]), 3))] = (tok, int(lab))
    enc = EfficientNetLite0()
    spec = ClipSpec(mode="windows", frames=4, seconds=2.0, stride=1.0)
    fly = {}
    for b in VideoLoader(str(demo_shards), "val", spec, 4, 64, mean=enc.mean, std=enc.std, num_workers=0, finite=True):
        tokens, _ = enc(b["video"])
        for vid, tok, lab, bnd in zip(b["video_id"], tokens, b["label"], b["bounds"]):
            fly[(vid, round(float(bnd[0]), 3))] = (tok, int(lab))
    assert set(cached) == set(fly) and len(fly) == 21
    for k, (tok, lab) in fly.items():
        c_tok, c_lab = cached[k]
        assert c_lab == lab
        assert c_tok.shape == tok.shape == (4 * 2 * 2, 1280)
        torch.testing.assert_close(c_tok, tok, rtol=2e-3, atol=2e-3)  # float16 storage
