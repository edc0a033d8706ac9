#!/usr/bin/env python
"""Run the frozen frame encoder once over every split a config reads and write the tokens as
float16 FFCV files, one ``<split>.beton`` per split in a directory, for ``data.backend=features``.

    python tools/extract_features.py --config configs/lvu/genre.yaml --out cache/lvu_genre_features \
        [--splits train,val,test] [--train-stride SECONDS] [section.key=value ...]

then train with ``data.backend=features data.features=cache/lvu_genre_features``.

* val / test: exactly the clips evaluation cuts (``data.eval_clip``: every ``data.clip_seconds``
  window at ``data.eval_stride_seconds`` - LVU's 60 s / 1 s - or the centre / full clip), so the
  feature path reports the video path's metrics;
* train: windows of ``data.clip_seconds`` every ``--train-stride`` seconds (default: the window
  length, i.e. non-overlapping), each a training example; with ``data.sampling: segments`` every
  segment of every video instead (one record of (P, D) tokens each), from which the feature loader
  draws ``data.frames`` segments per video each epoch, as the video path does (the ViS4mer
  authors' protocol, :func:`data.clips.segment_indices`).

Frames are normalised with the encoder's mean/std; encoding runs in bf16 on a GPU.
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

from s5video.data import build_loader, loader_kwargs  # noqa: E402
from s5video.data.clips import ClipSpec  # noqa: E402
from s5video.data.features import feature_path, write_feature_cache  # noqa: E402
from s5video.data.loader import VideoLoader  # noqa: E402
from s5video.data.sources import read_manifest  # noqa: E402
from s5video.models.encoders import create_encoder  # noqa: E402
from s5video.trainer.config import ConfigError, load_config  # noqa: E402
from s5video.trainer.evaluate import eval_clip_spec  # noqa: E402
from s5video.trainer.preflight import feature_cache_meta, splits_read  # noqa: E402


def window_records(loader: VideoLoader, encoder, device: str):
    """Yield one record per window: tokens (T*P, D) float32 on CPU, label, video_id, bounds (and the
    caption, for captioning)."""
    for batch in loader:
        tokens, _ = encoder(batch["video"].to(device))  # (B, T*P, D)
        for i in range(tokens.shape[0]):
            record = {"tokens": tokens[i].cpu().numpy(), "label": batch["label"][i].numpy(),
                      "video_id": batch["video_id"][i], "bounds": batch["bounds"][i].numpy()}
            if "caption" in batch:
                record["caption"] = batch["caption"][i]
            yield record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", default=None, help="cache directory (default: the config's data.features)")
    ap.add_argument("--splits", default=None, help="comma-separated (default: every split the config's run reads)")
    ap.add_argument("--train-stride", type=float, default=None,
                    help="seconds between training windows (default: data.clip_seconds, non-overlapping)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("overrides", nargs="*", help="section.key=value")
    a = ap.parse_args(argv)
    try:
        cfg = load_config(a.config, a.overrides)
    except ConfigError as e:
        ap.exit(2, f"extract_features.py: error: {e}\n")
    out = a.out or cfg.data.features
    if not out:
        ap.exit(2, "extract_features.py: error: give --out DIR (or set data.features in the config)\n")
    d, task = cfg.data, cfg.model.task
    splits = a.splits.split(",") if a.splits else list(dict.fromkeys(
        p for v in splits_read(cfg).values() for p in v.split("+")))
    num_classes = cfg.model.num_classes or len(read_manifest(d.shards).get("classes", []))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    encoder = create_encoder(cfg.model.encoder, cfg.model.encoder_weights, cfg.model.frame_tokens,
                             cfg.model.spatial_grid).to(device)
    probe = torch.zeros(1, d.frames, 3, d.image_size, d.image_size, device=device)
    probe_tokens, grid = encoder(probe)
    tok_shape = probe_tokens.shape[1:]  # (T*P, D)
    label_dtype = np.int64 if task == "classification" else np.float32
    label_shape = (num_classes,) if task == "multilabel" else ()
    os.makedirs(out, exist_ok=True)
    per_frame = tok_shape[0] // d.frames  # P tokens per frame
    for split in splits:
        num_tokens = tok_shape[0]
        if split == d.train_split and d.sampling == "segments":
            spec = ClipSpec(mode="all_segments", frames=1, segment_seconds=d.segment_seconds)
            num_tokens = per_frame
        elif split == d.train_split:
            stride = a.train_stride or d.clip_seconds
            spec = ClipSpec(mode="windows", frames=d.frames, seconds=d.clip_seconds, stride=stride,
                            window_labels=d.window_labels)  # training targets per window
        else:
            spec = eval_clip_spec(d)
        loader = build_loader("cpu", d.shards, split, spec, **loader_kwargs(
            cfg, mean=encoder.mean, std=encoder.std, batch_size=a.batch_size, num_workers=min(2, d.num_workers),
            task=task, num_classes=num_classes, finite=True, features=None))
        meta = {**feature_cache_meta(cfg, split), "split": split, "shards": d.shards,  # + how the clips were cut
                "stride_seconds": spec.stride if spec.mode == "windows" else None,
                "grid": list(grid) if grid else None}  # (T, H', W') of the tokens, for max_st pooling
        records = tqdm(window_records(loader, encoder, device), desc=f"encoding {split}", unit="clip")
        path = feature_path(out, split)
        n = write_feature_cache(records, path, num_tokens, tok_shape[1], label_shape, label_dtype, meta=meta)
        loader.close()
        videos = len(json.load(open(path + ".videos.json")))
        what = "segments" if spec.mode == "all_segments" else "clips"
        print(f"{split}: {n} {what} of {videos} videos -> {path} (tokens {(num_tokens, tok_shape[1])} float16)",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
