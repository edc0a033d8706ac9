#!/usr/bin/env python
"""Sharding throughput: seconds of video sharded per wall-clock second, vs a plain ffmpeg transcode.

Both sides process the same segments (the labelled demo clips by default) with the same encoder
settings and the same number of parallel jobs; the plain side only runs ``ffmpeg`` (no probing,
validation decode, tar writing or manifest). Prints one JSON line per measurement and the ratio::

    python benchmarks/make_shards.py [--workers 2] [--codec vp9] [--repeat 1] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from s5video.tools.datasets import demo_items  # noqa: E402
from s5video.tools.shardwriter import EncodeOptions, _ffmpeg_cmd, make_shards  # noqa: E402


def plain_ffmpeg(items, opts: EncodeOptions, workers: int, tmp: str) -> float:
    """Transcode every item with the ffmpeg CLI alone, ``workers`` at a time; returns wall seconds."""
    def one(it):
        dst = os.path.join(tmp, it.key + ".mp4")
        subprocess.run(_ffmpeg_cmd(it.path, dst, it.start or 0.0, (it.end - it.start) if it.end else None, opts),
                       check=True, capture_output=True)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, items))
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default=os.path.join("cache", "demo_footage"))
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--codec", default="vp9", choices=["vp9", "h264"])
    ap.add_argument("--repeat", type=int, default=1, help="take the best of N runs per side")
    ap.add_argument("--json", action="store_true", help="JSON lines only")
    a = ap.parse_args()
    items, classes, _ = demo_items(a.cache, pretrain=False)
    opts = EncodeOptions(codec=a.codec, fps=8.0, short_side=144, threads=1 if a.workers > 1 else 0)
    video_s = sum(it.end - it.start for it in items)
    best_ours = best_plain = float("inf")
    for _ in range(a.repeat):
        tmp = tempfile.mkdtemp(prefix="bench-shards-")
        try:
            t0 = time.perf_counter()
            make_shards(items, os.path.join(tmp, "out"), opts, classes=classes, workers=a.workers, progress=False)
            best_ours = min(best_ours, time.perf_counter() - t0)
            os.makedirs(os.path.join(tmp, "plain"))
            best_plain = min(best_plain, plain_ffmpeg(items, opts, a.workers, os.path.join(tmp, "plain")))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    rows = [
        {"name": "s5video make_shards", "codec": a.codec, "workers": a.workers, "videos": len(items),
         "video_s": round(video_s, 2), "wall_s": round(best_ours, 2), "video_s_per_s": round(video_s / best_ours, 2)},
        {"name": "plain ffmpeg transcode", "codec": a.codec, "workers": a.workers, "videos": len(items),
         "video_s": round(video_s, 2), "wall_s": round(best_plain, 2), "video_s_per_s": round(video_s / best_plain, 2)},
    ]
    ratio = best_plain / best_ours
    for r in rows:
        print(json.dumps(r))
    print(json.dumps({"ratio_ours_vs_ffmpeg": round(ratio, 3)}))
    if not a.json:
        print(f"\n{'pipeline':<26}{'video s':>10}{'wall s':>10}{'video s / s':>14}")
        for r in rows:
            print(f"{r['name']:<26}{r['video_s']:>10.1f}{r['wall_s']:>10.2f}{r['video_s_per_s']:>14.2f}")
        print(f"ratio (ours / plain ffmpeg): {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
