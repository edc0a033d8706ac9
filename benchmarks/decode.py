#!/usr/bin/env python
"""Decode throughput per backend, next to the codec's own limit on the same files in the same run.

Reference: libavcodec decoding every frame of every video of the split in one process (PyAV,
frame threading, no pixel conversion), videos read into memory first. Backends: our loaders
producing training batches (every frame decoded, the sampled frames converted, resized, cropped,
normalised), ``--workers`` processes, over one virtual epoch. Reported as decoded frames/s and the
ratio to the reference. JSON lines with ``--json``.

    python benchmarks/decode.py --shards cache/demo_shards --split pretrain [--workers 2] [--json]
    python benchmarks/decode.py --make-clips cache/decode_clips   # then --shards cache/decode_clips --split train

``--make-clips DIR`` cuts 64 real 2-s clips (Kinetics' shape: short clips, so per-sample overhead
counts) from the demo's Big Buck Bunny at short side 256, 16 each in H.264, VP9, MPEG-4 part 2 and
AV1, and shards them with ``tools/make_shards.py csv --codec copy`` (the source codecs are kept).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


CODECS = {"h264": ["-c:v", "libx264", "-preset", "fast", "-crf", "23"],
          "vp9": ["-c:v", "libvpx-vp9", "-b:v", "0", "-crf", "33", "-deadline", "realtime", "-cpu-used", "8"],
          "mpeg4": ["-c:v", "mpeg4", "-q:v", "4"],
          "av1": ["-c:v", "libsvtav1", "-preset", "10", "-crf", "35"]}


def make_clips(out: Path, footage: Path, per_codec: int = 16, seconds: float = 2.0) -> None:
    """64 real 2-s clips in four codecs (``CODECS``), sharded as-is into ``out`` (split ``train``)."""
    src = out / "videos"
    src.mkdir(parents=True, exist_ok=True)
    rows = ["path,label,split"]
    for c, (codec, args) in enumerate(CODECS.items()):
        for i in range(per_codec):
            start = 30 + 8.2 * (c * per_codec + i)  # spread over the film (596 s)
            name = f"{codec}_{i:02d}.mp4"
            subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-ss", f"{start:.2f}", "-t", str(seconds),
                            "-i", str(footage), "-an", "-vf", "scale=-2:256", *args, str(src / name)],
                           check=True, capture_output=True)
            rows.append(f"{name},{codec},train")
    (out / "clips.csv").write_text("\n".join(rows) + "\n")
    subprocess.run([sys.executable, "tools/make_shards.py", "csv", "--csv", str(out / "clips.csv"), "--root", str(src),
                    "--out", str(out), "--codec", "copy", "--val-fraction", "0", "--no-progress"],
                   cwd=Path(__file__).resolve().parents[1], check=True)


def reference(urls: list[str]) -> tuple[int, float]:
    """libavcodec's limit: every frame of every video decoded in this one process, frame threading."""
    import av
    import webdataset as wds
    blobs = [s["mp4"] for s in wds.WebDataset(urls, shardshuffle=False)]
    frames, t0 = 0, time.perf_counter()
    for b in blobs:
        with av.open(io.BytesIO(b)) as c:
            stream = c.streams.video[0]
            stream.thread_type = "FRAME"
            frames += sum(1 for _ in c.decode(stream))
    return frames, time.perf_counter() - t0


def backend_run(name: str, shards: str, split: str, workers: int, frames_per_sample: float) -> tuple[float, float]:
    from s5video.data import build_loader
    from s5video.data.clips import ClipSpec
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
    ap.add_argument("--make-clips", type=Path, metavar="DIR", help="build the 64-clip, four-codec set and exit")
    ap.add_argument("--footage", type=Path, default=Path("cache/demo_footage/bbb.mp4"))
    a = ap.parse_args()
    if a.make_clips:
        make_clips(a.make_clips, a.footage)
        return 0
    from s5video.data.sources import resolve_shards
    ss = resolve_shards(a.shards, a.split)
    frames, secs = reference(ss.urls)
    base = frames / secs
    rows = [{"backend": "PyAV, 1 process, frame threads", "frames": frames, "seconds": round(secs, 3), "frames_per_s": round(base, 1),
             "ratio": 1.0}]
    per_sample = frames / ss.num_samples
    for name in a.backends:
        try:
            f, s = backend_run(name, a.shards, a.split, a.workers, per_sample)
        except RuntimeError as e:  # e.g. DALI's CPU decoder has no H.264 / MPEG-4 / AV1
            rows.append({"backend": name, "error": str(e).splitlines()[0][:160]})
            continue
        rows.append({"backend": name, "frames": int(f), "seconds": round(s, 3), "frames_per_s": round(f / s, 1),
                     "ratio": round(f / s / base, 3)})
    for r in rows:
        print(json.dumps({**r, "workers": a.workers, "split": a.split}))
    if not a.json:
        print(f"\n{'backend':<32}{'frames/s':>10}{'vs reference':>14}")
        for r in rows:
            print(f"{r['backend']:<32}" + (f"  error: {r['error']}" if "error" in r else
                                           f"{r['frames_per_s']:>10.1f}{r['ratio']:>13.2f}x"))
    return 0


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
