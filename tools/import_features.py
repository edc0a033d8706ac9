#!/usr/bin/env python
"""Turn ViS4mer users' per-video feature dumps into our feature cache, so ``data.backend=features``
trains on them without re-encoding a video.

    python tools/import_features.py --features DIR --out CACHE --breakfast-csv-dir data/Breakfast
    python tools/import_features.py --features DIR --out CACHE --coin-json data/COIN/COIN.json
    then: trainer/main.py --config configs/breakfast.yaml data.backend=features data.features=CACHE \
          data.shards=CACHE model.width=1024

Input, as the authors' ``datasets/breakfast_dataset.py`` / ``coin_dataset.py`` read it
(md-mohaiminul/ViS4mer): ``DIR/<video_id>.npy`` per video, an array (T, P, D) - one entry per
second of video (T segments) of P tokens of width D (their Video Swin features: D = 1,024) - and
the labels and splits of the authors' files: Breakfast ``{train,test}.csv`` (header
``file_name,duration,action,class_id``; the class is the last column, the name ``action``), COIN
``COIN.json`` (``database[id].subset`` training/testing, class ``recipe_type``, name ``class``).

Output (``CACHE``), what ``tools/extract_features.py`` writes for ``data.sampling: segments``:

* ``train.beton`` - every segment of every training video, one record of (P, D) tokens each; the
  feature loader draws ``--frames`` of them per video and epoch (their random sorted sample);
* ``val.beton`` / ``test.beton`` - one record per video of (frames * P, D) tokens at their uniform
  indices (:func:`data.clips.segment_indices`; shorter videos stretched);
* ``val`` is carved from train by :func:`tools.datasets.carve_val` (``--val-fraction``, by person
  for Breakfast, by video for COIN; the authors select on test, we do not);
* ``manifest.json`` (classes, task, sample counts per split), so ``data.shards=CACHE`` gives the
  trainer its classes; ``rejected.jsonl``: every video whose file is missing, unreadable or not a
  (T, P, D) array, with the reason (the authors' scripts skip five such videos by a hard-coded list).

Tokens are stored as float16 (as extracted caches are).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from s5video.data.clips import segment_indices  # noqa: E402
from s5video.data.features import feature_path, write_feature_cache  # noqa: E402
from s5video.tools.datasets import carve_val  # noqa: E402
from s5video.tools.shardwriter import Item  # noqa: E402


class FeatureImportError(ValueError):
    """A labels file that is not the authors' format; the message names the file and the line."""


def breakfast_labels(csv_dir: str) -> tuple[list[Item], list[str]]:
    """Items of the authors' ``train.csv`` / ``test.csv`` (video id = ``file_name``, class =
    the last column, person = the id's first field: the carve never splits a person)."""
    items, names = [], {}
    for split in ("train", "test"):
        path = os.path.join(csv_dir, f"{split}.csv")
        if not os.path.exists(path):
            raise FeatureImportError(f"--breakfast-csv-dir: {path} not found (the authors' data/Breakfast/{split}.csv)")
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
        if not rows or rows[0][:1] != ["file_name"]:
            raise FeatureImportError(f"{path}: header {rows[0] if rows else '(empty)'}, expected "
                               "file_name,duration,action,class_id")
        for n, row in enumerate(rows[1:], start=2):
            if not row:
                continue
            try:
                vid, cls = row[0].strip(), int(row[-1])
            except (ValueError, IndexError):
                raise FeatureImportError(f"{path} line {n}: {','.join(row)!r}: expected file_name,...,class_id") from None
            names.setdefault(cls, row[2].strip() if len(row) >= 4 else str(cls))
            items.append(Item(key=vid, path=vid, split=split, label=cls, label_name=names[cls],
                              group=vid.split("-")[0]))
    return items, _class_list(names)


def coin_labels(json_path: str) -> tuple[list[Item], list[str]]:
    """Items of ``COIN.json``: subset training -> train, testing -> test; class ``recipe_type``."""
    try:
        db = json.load(open(json_path, encoding="utf-8"))["database"]
    except (OSError, ValueError, KeyError) as e:
        raise FeatureImportError(f"--coin-json: {json_path}: not COIN.json ({e})") from None
    items, names = [], {}
    for vid, e in sorted(db.items()):
        split = {"training": "train", "testing": "test"}.get(e.get("subset"))
        if split is None:
            continue
        cls = int(e["recipe_type"])
        names.setdefault(cls, e.get("class", str(cls)))
        items.append(Item(key=vid, path=vid, split=split, label=cls, label_name=names[cls], group=vid))
    return items, _class_list(names)


def _class_list(names: dict[int, str]) -> list[str]:
    n = max(names) + 1
    return [names.get(i, f"class_{i}") for i in range(n)]


def load_features(path: str) -> np.ndarray:
    """One video's (T, P, D) array (a (T, D) array is one token per segment). Raises ValueError
    with the reason for anything else."""
    a = np.load(path, mmap_mode="r", allow_pickle=False)
    if a.ndim == 2:
        a = a[:, None, :]
    if a.ndim != 3 or 0 in a.shape:
        raise ValueError(f"shape {a.shape}, expected (T, P, D) with T, P, D >= 1")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"dtype {a.dtype}, expected floating point")
    return a


def import_features(items: list[Item], classes: list[str], features: str, out: str, frames: int,
                    val_fraction: float, dataset: str) -> dict:
    """Write the cache (see the module docstring); returns the manifest."""
    os.makedirs(out, exist_ok=True)
    rejected, ok, shape = [], [], None
    for it in items:
        path = os.path.join(features, f"{it.key}.npy")
        try:
            a = load_features(path)
            if shape is not None and a.shape[1:] != shape:
                raise ValueError(f"tokens {a.shape[1:]}, but the other videos have {shape}")
            if not np.isfinite(a).all():
                raise ValueError("non-finite values")
        except (OSError, ValueError) as e:
            rejected.append({"key": it.key, "path": path, "split": it.split, "reason": str(e)})
            continue
        shape = shape or a.shape[1:]
        it.extra["segments"] = a.shape[0]
        ok.append(it)
    if not ok:
        raise FeatureImportError(f"--features: no usable .npy in {features} ({len(rejected)} rejected; first: "
                           f"{rejected[0]['reason'] if rejected else 'no videos listed'})")
    carved = carve_val(ok, val_fraction, classes=classes)
    P, D = shape
    side = int(round(P ** 0.5))
    meta = {"clips": None, "frames": frames, "sampling": "segments", "segment_seconds": 1.0, "clip_seconds": None,
            "encoder": f"imported:{os.path.abspath(features)}", "imported_from": dataset,
            "grid": [frames, side, side] if side * side == P else None}
    splits = {}
    for split in ("train", "val", "test"):
        its = [it for it in ok if it.split == split]
        if not its:
            continue

        def records(its=its, train=split == "train"):
            for it in its:
                a = np.asarray(load_features(os.path.join(features, f"{it.key}.npy")), dtype=np.float32)
                if train:  # every segment: the loader draws `frames` of them per epoch
                    for s in range(a.shape[0]):
                        yield {"tokens": a[s], "label": it.label, "video_id": it.key, "bounds": (s, s + 1.0)}
                else:
                    idx = segment_indices(a.shape[0], frames, train=False)
                    yield {"tokens": a[idx].reshape(frames * P, D), "label": it.label, "video_id": it.key,
                           "bounds": (0.0, float(a.shape[0]))}
        clips = "all_segments" if split == "train" else "segments"
        n = write_feature_cache(records(), feature_path(out, split), P if split == "train" else frames * P, D,
                                meta={**meta, "split": split, "clips": clips})
        counts = np.bincount([it.label for it in its], minlength=len(classes)).tolist()
        splits[split] = {"num_samples": len(its), "records": n, "class_counts": counts,
                         "seconds": float(sum(it.extra["segments"] for it in its))}
    manifest = {"version": 1, "dataset": dataset, "task": "classification", "classes": classes, "splits": splits,
                "features": {"source": os.path.abspath(features), "tokens_per_segment": P, "dim": D,
                             "frames": frames}, "val_carved": carved,
                "classes_without_train": [c for i, c in enumerate(classes)
                                          if "train" in splits and not splits["train"]["class_counts"][i]],
                "warnings": []}
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    with open(os.path.join(out, "rejected.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rejected)
    manifest["_rejected"] = rejected
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--features", required=True, help="directory of <video_id>.npy, (T, P, D) each")
    ap.add_argument("--out", required=True, help="cache directory to write (data.features and data.shards)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--breakfast-csv-dir", help="directory with the authors' train.csv and test.csv")
    src.add_argument("--coin-json", help="COIN.json")
    ap.add_argument("--frames", type=int, default=64, help="segments per video (data.frames; theirs: l_secs=64)")
    ap.add_argument("--val-fraction", type=float, default=0.1, help="of the train videos, carved into val")
    a = ap.parse_args(argv)
    try:
        items, classes = breakfast_labels(a.breakfast_csv_dir) if a.breakfast_csv_dir else coin_labels(a.coin_json)
        if a.frames < 1 or not 0 <= a.val_fraction < 1:
            raise FeatureImportError(f"--frames {a.frames} must be >= 1 and --val-fraction {a.val_fraction} in [0, 1)")
        m = import_features(items, classes, a.features, a.out, a.frames, a.val_fraction,
                            "breakfast" if a.breakfast_csv_dir else "coin")
    except FeatureImportError as e:
        ap.exit(2, f"import_features.py: error: {e}\n")
    for r in m["_rejected"][:10]:
        print(f"rejected {r['key']} ({r['split']}): {r['reason']}")
    print(f"{sum(s['num_samples'] for s in m['splits'].values())} videos imported, {len(m['_rejected'])} rejected "
          f"({os.path.join(a.out, 'rejected.jsonl')}); tokens per segment {m['features']['tokens_per_segment']} x "
          f"{m['features']['dim']}; videos per split: "
          + ", ".join(f"{k} {v['num_samples']}" for k, v in m["splits"].items()) + f" -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
