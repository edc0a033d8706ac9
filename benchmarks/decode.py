#!/usr/bin/env python
"""Decode throughput per backend, next to a standalone decode of the same files in the same run.

Standalone: PyAV decodes every video of the split to RGB, ``--workers`` processes, videos read into
memory first (pure decode). Backends: our loaders producing training batches (decode + clip
sampling + resize + crop + normalise), over one virtual epoch. Reported as decoded frames/s and
the ratio to the standalone decoder. JSON lines with ``--json``.

    python benchmarks/decode.py --shards cache/demo_shards --split pretrain [--workers 2] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _decode_count(data: bytes) -> int:
    from data.cpu import decode_video
    return len(decode_video(data))


def standalone(urls: list[str], workers: int) -> tuple[int, float]:
    import webdataset as wds
    blobs = [s["mp4"] for s in wds.WebDataset(urls, shardshuffle=False)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        frames = sum(pool.map(_decode_count, blobs, chunksize=1))
    return frames, time.perf_counter() - t0


def backend_run(name: str, shards: str, split: str, workers: int, frames_per_sample: float) -> tuple[float, float]:
    from data import build_loader
    from data.clips import ClipSpec
    spec = ClipSpec(mode="train", frames=8, seconds=2.0)
    kw = dict(batch_size=4, image_size=112, seed=0)
    if name == "cpu":
        kw["num_workers"] = workers
    else:
        kw["num_threads"] = workers
    loader = build_loader("cpu" if name == "cpu" else "dali", shards, split, spec, **kw)
    it = iter(loader)
    next(it)  # start-up (workers, pipeline build) is not decode throughput
    t0 = time.perf_counter()
    n = sum(len(b["video_id"]) for b in it)
    return n * frames_per_sample, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", default=os.path.join("cache", "demo_shards"))
    ap.add_argument("--split", default="pretrain")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--backends", nargs="+", default=["cpu", "dali-cpu"] + (["dali-mixed"] if _cuda() else []))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    from data.sources import resolve_shards
    ss = resolve_shards(a.shards, a.split)
    frames, secs = standalone(ss.urls, a.workers)
    base = frames / secs
    rows = [{"backend": "standalone PyAV", "frames": frames, "seconds": round(secs, 3), "frames_per_s": round(base, 1),
             "ratio": 1.0}]
    per_sample = frames / ss.num_samples
    for name in a.backends:
        f, s = backend_run(name, a.shards, a.split, a.workers, per_sample)
        rows.append({"backend": name, "frames": int(f), "seconds": round(s, 3), "frames_per_s": round(f / s, 1),
                     "ratio": round(f / s / base, 3)})
    for r in rows:
        print(json.dumps({**r, "workers": a.workers, "split": a.split}))
    if not a.json:
        print(f"\n{'backend':<18}{'frames/s':>10}{'vs standalone':>15}")
        for r in rows:
            print(f"{r['backend']:<18}{r['frames_per_s']:>10.1f}{r['ratio']:>14.2f}x")
    return 0


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
