"""Small copies of the real datasets' own files, for parser and acceptance tests.

Annotation files are written exactly as the datasets ship them (``../shared/docs/datasets.md``):
LVU's space-separated label files (the three real ones from ``shared/datasets/lvu_1.0`` verbatim,
the other six in the same format), DeepMind's Kinetics CSVs (the test CSV without ``label``),
``COIN.json``, the Breakfast directory tree (stereo pairs ``_ch0``/``_ch1``), Charades CSVs and
``Charades_v1_classes.txt``. Videos are 3-second cuts of the real demo footage, named and laid out
as each dataset names them (YouTube ids that start with ``-``, labels with spaces in directory
names, ``.avi`` for Breakfast); every fixture also has rows whose video is missing, and some
malformed rows, as real copies do.

Each ``build_*`` returns the ``make_shards.py`` arguments for the fixture and what a correct parse
must give (``expect``: samples per split, rejected count, classes).
"""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LVU_REAL = REPO.parent / "shared" / "datasets" / "lvu_1.0"

# (source, start s): distinct real shots of the demo footage, cut to 3-s clips
POOL_SHOTS = [("bbb", 5), ("bbb", 40), ("bbb", 100), ("bbb", 150), ("bbb", 220), ("bbb", 300), ("bbb", 420),
              ("bbb", 510), ("bikes", 0), ("bikes", 5), ("carphone", 0), ("bbb", 560)]


def build_pool(footage: dict[str, str], out: Path) -> list[Path]:
    """12 real 3-s clips (160 px wide, 8 fps) as MP4 and, for Breakfast, as MPEG-4 part 2 AVI."""
    out.mkdir(parents=True, exist_ok=True)
    clips = []
    for i, (src, t) in enumerate(POOL_SHOTS):
        mp4 = out / f"clip{i:02d}.mp4"
        if not mp4.exists():
            subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-ss", str(t), "-i", footage[src], "-t", "3",
                            "-vf", "fps=8,scale=160:-2", "-an", "-c:v", "libx264", "-preset", "ultrafast", str(mp4)],
                           check=True)
            subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(mp4), "-c:v", "mpeg4", "-q:v", "5",
                            str(mp4.with_suffix(".avi"))], check=True)
        clips.append(mp4)
    return clips


def _put(pool: list[Path], i: int, dst: Path, ext: str = ".mp4") -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(pool[i % len(pool)].with_suffix(ext), dst)


# ----------------------------------------------------------------------------- LVU

LVU_FIXTURE_ROWS = {  # the six tasks without a real file here: rows in the real format
    "relationship": ["0 friend", "1 wife", "2 husband", "3 boyfriend"],
    "way_speaking": ["0 explains", "1 confronts", "2 discusses", "3 teaches", "4 threatens"],
    "scene": ["0 office", "1 airport", "2 school", "3 hotel", "4 prison", "5 restaurant"],
    "director": [f"{i} nm{229 + i:07d}" for i in (0, 1, 2, 4, 5, 7, 9)],  # ids 3, 6, 8 absent, as in LVU
    "writer": [f"{i} nm{1000 + i:07d}" for i in (0, 2, 3, 5, 6, 9)],
    "year": [f"{i} {1930 + 10 * i}" for i in range(9)],
}


def _lvu_ids(n: int, start: int = 0) -> list[str]:
    """YouTube-like ids, some starting with '-' or containing '_' (never pass one as a bare CLI argument)."""
    return [("-" if k % 3 == 0 else "") + f"x{k:02d}_Q-{k * 7 % 10}abcd"[:11 - (k % 3 == 0)]
            for k in range(start, start + n)]


def build_lvu(task_dir: str, pool: list[Path], root: Path, per_split=(4, 2, 2)) -> dict:
    """``root/lvu_1.0/<task_dir>/{train,val,test}.csv`` + ``root/videos/<youtube_id>.mp4``.

    genre / like_ratio / view_count: the real files verbatim; videos made for the first rows of each
    split (the others are then 'video not found', as for any partial download). The other tasks: rows
    in the real format over the fixture's classes, plus one row of a missing video per split and a
    malformed row in train.
    """
    labels, videos = root / "lvu_1.0" / task_dir, root / "videos"
    labels.mkdir(parents=True)
    expect = {"splits": {}, "rejected": 0}
    k = 0
    for split, n in zip(("train", "val", "test"), per_split):
        real = LVU_REAL / task_dir / f"{split}.csv"
        if real.exists():
            shutil.copyfile(real, labels / f"{split}.csv")
            rows = real.read_text().splitlines()[1:]
            chosen = rows[:n] if task_dir != "genre" else _one_per_class(rows, n)
            for row in chosen:
                _put(pool, k, videos / f"{row.split()[-2]}.mp4")
                k += 1
            expect["rejected"] += len(rows) - len(chosen)
        else:
            classes = LVU_FIXTURE_ROWS[task_dir]
            ids = _lvu_ids(n + 1, start=k)
            lines = ["class_id class_name youtube_id imdb_id"]
            for j, yid in enumerate(ids):
                lines.append(f"{classes[(k + j) % len(classes)]} {yid} tt{1000000 + k + j:07d}")
                if j < n:
                    _put(pool, k + j, videos / f"{yid}.mp4")
            if split == "train":
                lines.append(f"{classes[0]} yt_extra tt0000001 extra_field")  # 5 fields
                lines.append(f"99 {classes[0].split()[1]} {ids[0]}X tt0000002")  # a class id the task lacks
                expect["rejected"] += 2
            (labels / f"{split}.csv").write_text("\n".join(lines) + "\n")
            expect["rejected"] += 1  # the last id has no video
            k += n + 1
        expect["splits"][split] = n
    return {"args": ["--labels", str(root / "lvu_1.0"), "--videos", str(videos)], "expect": expect}


def _one_per_class(rows: list[str], n: int) -> list[str]:
    """The first row of each class id in turn (so a small train split holds every class)."""
    by: dict[str, list[str]] = {}
    for r in rows:
        by.setdefault(r.split()[0], []).append(r)
    out, i = [], 0
    while len(out) < n:
        for c in sorted(by):
            if i < len(by[c]) and len(out) < n:
                out.append(by[c][i])
        i += 1
    return out


# ----------------------------------------------------------------------------- Kinetics

K_LABELS = ["abseiling", "passing American football (in game)", "tying bow tie"]


def build_kinetics(pool: list[Path], root: Path) -> dict:
    """Kinetics-600 CSVs as DeepMind ships them (``train.csv``/``validate.csv`` with ``label``;
    ``test.csv`` without) and the downloader layout ``<split>/<label>/<id>_<start:06d>_<end:06d>.mp4``."""
    rows = {"train": [], "validate": [], "test": []}
    k = 0
    for split, n in (("train", 6), ("validate", 3), ("test", 3)):
        for j in range(n):
            yid = ("-" if j % 2 == 0 else "") + f"kin{k:02d}_A-b"
            label = K_LABELS[k % 3]
            ts = 10 * (k % 5)
            rows[split].append((label, yid, ts, ts + 10))
            folder = root / "k600" / split / (label if split != "test" else "") / f"{yid}_{ts:06d}_{ts + 10:06d}.mp4"
            _put(pool, k, folder)
            k += 1
    rows["train"].append((K_LABELS[0], "gone_from_youtube", 0, 10))  # missing video: real copies always have some
    rows["train"].append((K_LABELS[1], "badtime", "x", 10))  # malformed row
    files = []
    for split, rs in rows.items():
        path = root / f"{split}.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            if split == "test":
                w.writerow(["youtube_id", "time_start", "time_end", "split"])
                w.writerows([(y, s, e, split) for _, y, s, e in rs])
            else:
                w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
                w.writerows([(lab, y, s, e, split) for lab, y, s, e in rs])
        files.append(str(path))
    return {"args": ["--csv", *files, "--videos", str(root / "k600")],
            "expect": {"splits": {"train": 6, "val": 3, "test": 3}, "rejected": 2, "classes": sorted(K_LABELS)}}


# ----------------------------------------------------------------------------- COIN

def build_coin(pool: list[Path], root: Path, per_class: int = 4, classes=(0, 17, 179)) -> dict:
    """``COIN.json`` (``database`` of videos with recipe_type, class, subset training/testing, start,
    end, duration, video_url, annotation) and ``videos/<recipe_type>/<id>.mp4``."""
    db, k = {}, 0
    names = {0: "AssembleBed", 17: "MakeBurger", 179: "ReplaceCDDriveWithSSD"}
    for rt in classes:
        for j in range(per_class):
            vid = ("-" if k % 4 == 0 else "") + f"coin{k:03d}_Xy"
            subset = "testing" if j == per_class - 1 else "training"
            db[vid] = {"recipe_type": rt, "class": names[rt], "subset": subset, "start": 1.0, "end": 2.5,
                       "duration": 3.0, "video_url": f"https://www.youtube.com/embed/{vid}",
                       "annotation": [{"id": "1", "segment": [0.2, 1.4], "label": "step one"}]}
            _put(pool, k, root / "videos" / str(rt) / f"{vid}.mp4")
            k += 1
    db["missing01234"] = dict(db[next(iter(db))], subset="training")  # no video on disk
    db["nosubset0000"] = {"recipe_type": 0, "class": names[0]}  # malformed entry
    (root / "COIN.json").write_text(json.dumps({"database": db}))
    n_train = len(classes) * (per_class - 1)
    return {"args": ["--json", str(root / "COIN.json"), "--videos", str(root / "videos")],
            "expect": {"train_and_val": n_train, "splits": {"test": len(classes)}, "rejected": 2}}


# ----------------------------------------------------------------------------- Breakfast

def build_breakfast(pool: list[Path], root: Path) -> dict:
    """``BreakfastII_15fps_qvga_sync/P<person>/<camera>/P<person>_<activity>[_ch0|_ch1].avi``: train
    persons P03-P46, test P47-P54; the stereo camera's two channel files are one recording."""
    base = root / "BreakfastII_15fps_qvga_sync"
    recs = [("P03", "cam01", "cereals"), ("P03", "stereo", "cereals"), ("P15", "cam02", "cereals"),
            ("P12", "webcam01", "coffee"),
            ("P20", "cam02", "friedegg"), ("P27", "cam01", "juice"), ("P33", "webcam02", "milk"),
            ("P41", "cam01", "pancake"), ("P46", "stereo", "salat"), ("P47", "cam01", "sandwich"),
            ("P50", "cam02", "scrambledegg"), ("P54", "stereo", "tea")]
    k = 0
    for person, cam, act in recs:
        if cam == "stereo":
            for ch in ("ch0", "ch1"):
                _put(pool, k, base / person / cam / f"{person}_{act}_{ch}.avi", ".avi")
        else:
            _put(pool, k, base / person / cam / f"{person}_{act}.avi", ".avi")
        k += 1
    (base / "P03" / "cam01" / "P03_cereals.avi.labels").write_text("1-30 SIL\n")  # label files sit beside videos
    _put(pool, 0, base / "P60" / "cam01" / "P60_tea.avi", ".avi")  # person outside P03-P54
    _put(pool, 1, base / "P04" / "cam01" / "P04_bake.avi", ".avi")  # not a Breakfast activity
    return {"args": ["--root", str(base)],
            "expect": {"train_and_val": 9, "splits": {"test": 3}, "rejected": 2}}


# ----------------------------------------------------------------------------- Charades

CHARADES_HEADER = ["id", "subject", "scene", "quality", "relevance", "verified", "script", "objects", "descriptions",
                   "actions", "length"]


def charades_classes_txt(path: Path) -> None:
    names = ["Holding some clothes", "Putting clothes somewhere", "Taking some clothes from somewhere"]
    path.write_text("".join(f"c{i:03d} {names[i] if i < 3 else f'Action number {i}'}\n" for i in range(157)))


def build_charades(pool: list[Path], root: Path) -> dict:
    """``Charades_v1_train.csv`` / ``Charades_v1_test.csv`` (quoted fields, ``actions`` with times -
    one running past the 3-s video, as real annotations do -, empty ``actions``, two descriptions
    separated by ``;`` with commas inside), ``Charades_v1_classes.txt`` and ``Charades_v1_480/<id>.mp4``.
    Most of the 157 classes have no positive in test."""
    k = 0
    for split, n in (("train", 8), ("test", 3)):
        path = root / f"Charades_v1_{split}.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CHARADES_HEADER)
            for j in range(n):
                vid = f"{chr(65 + k % 26)}{k:02d}G8"
                acts = [] if j == 1 else [f"c{(k * 37) % 157:03d} 0.00 2.10", f"c{(k * 11 + 3) % 157:03d} 1.20 9.80"]
                w.writerow([vid, f"HR{k:02d}", "Kitchen", 6, 7, "Yes", "A person holds a cup, then sits.",
                            "cup;chair", f"A person is holding cup {j}. Then, they sit down on a chair.;"
                            f"Someone holds cup {j}, sits on a chair",  # one description per annotator, `;`
                            ";".join(acts), "3.00"])
                _put(pool, k, root / "Charades_v1_480" / f"{vid}.mp4")
                k += 1
            if split == "train":
                w.writerow(["ZZZ99", "HR99", "Bedroom", 5, 5, "Yes", "s", "o", "d", "c001 0.0 1.0", "4.0"])  # no video
                w.writerow(["BAD01", "HR98", "Bedroom", 5, 5, "Yes", "s", "o", "d", "c999 0.0 1.0", "4.0"])  # class
                _put(pool, 0, root / "Charades_v1_480" / "BAD01.mp4")
    charades_classes_txt(root / "Charades_v1_classes.txt")
    return {"args": ["--train-csv", str(root / "Charades_v1_train.csv"), "--test-csv",
                     str(root / "Charades_v1_test.csv"), "--videos", str(root / "Charades_v1_480"),
                     "--classes", str(root / "Charades_v1_classes.txt")],
            "expect": {"train_and_val": 8, "splits": {"test": 3}, "rejected": 2}}


BUILDERS = {"kinetics": build_kinetics, "coin": build_coin, "breakfast": build_breakfast, "charades": build_charades}


def build(dataset: str, pool: list[Path], root: Path, lvu_task_dir: str | None = None) -> dict:
    """The fixture of ``dataset`` under ``root`` (``lvu`` needs its task directory name)."""
    root.mkdir(parents=True, exist_ok=True)
    if dataset == "lvu":
        return build_lvu(lvu_task_dir, pool, root)
    return BUILDERS[dataset](pool, root)
