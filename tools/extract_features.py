#!/usr/bin/env python
"""Run the frozen frame encoder once over a split's shards (every evaluation window) and write the
tokens as float16 to an FFCV ``.beton`` for ``data.backend=features`` training.

    python tools/extract_features.py --config configs/demo_finetune.yaml --split train \
        --out cache/demo_features/train.beton [section.key=value ...]

Windows follow ``data.clip_seconds`` / ``data.eval_stride_seconds`` / ``data.frames``; frames are
normalised with the encoder's mean/std. Encoding runs in bf16 on a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from data.clips import ClipSpec  # noqa: E402
from data.features import write_feature_cache  # noqa: E402
from data.loader import VideoLoader  # noqa: E402
from models.encoders import create_encoder  # noqa: E402
from trainer.config import load_config  # noqa: E402


def window_records(loader: VideoLoader, encoder, device: str):
    """Yield one record per window: tokens (T*P, D) float32 on CPU, label, video_id, bounds."""
    for batch in loader:
        tokens, _ = encoder(batch["video"].to(device))  # (B, T*P, D)
        for i in range(tokens.shape[0]):
            yield {"tokens": tokens[i].cpu().numpy(), "label": batch["label"][i].numpy(),
                   "video_id": batch["video_id"][i], "bounds": batch["bounds"][i].numpy()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--split", required=True)
    ap.add_argument("--out", required=True, help="output .beton path")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("overrides", nargs="*", help="section.key=value")
    a = ap.parse_args(argv)
    cfg = load_config(a.config, a.overrides)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    encoder = create_encoder(cfg.model.encoder, cfg.model.encoder_weights).to(device)
    spec = ClipSpec(mode="windows", frames=cfg.data.frames, seconds=cfg.data.clip_seconds,
                    stride=cfg.data.eval_stride_seconds)
    loader = VideoLoader(cfg.data.shards, a.split, spec, batch_size=a.batch_size, image_size=cfg.data.image_size,
                         mean=encoder.mean, std=encoder.std, num_workers=min(2, cfg.data.num_workers),
                         task=cfg.model.task, num_classes=cfg.model.num_classes, finite=True)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    probe = torch.zeros(1, cfg.data.frames, 3, cfg.data.image_size, cfg.data.image_size, device=device)
    tok_shape = encoder(probe)[0].shape[1:]  # (T*P, D)
    task = cfg.model.task
    label_dtype = np.int64 if task == "classification" else np.float32
    label_shape = (cfg.model.num_classes,) if task == "multilabel" else ()
    records = tqdm(window_records(loader, encoder, device), desc=f"encoding {a.split}", unit="window")
    n = write_feature_cache(records, a.out, tok_shape[0], tok_shape[1], label_shape, label_dtype)
    videos = len(json.load(open(a.out + ".videos.json")))
    print(f"{n} windows of {videos} videos -> {a.out} (tokens {tuple(tok_shape)} float16)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
