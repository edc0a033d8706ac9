"""Dataset parsers on the datasets' own formats: the real LVU label files verbatim, and fixtures of
Kinetics, COIN, Breakfast and Charades written exactly as those datasets ship them
(tests/real_formats.py). Every malformed row, unknown class and missing video is rejected with its
reason, never a traceback; validation splits are carved from train by video, deterministically."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests import real_formats
from tests.real_formats import LVU_REAL
from s5video.tools import datasets
from s5video.tools.make_shards import build_parser, collect
from s5video.tools.shardwriter import Item

REPO = Path(__file__).resolve().parents[1]
LVU_DIRS = {task: d for task, (d, _, _) in datasets.LVU_TASKS.items()}


def _touch_videos(dirpath: Path, ids) -> None:
    dirpath.mkdir(parents=True, exist_ok=True)
    for i in ids:
        (dirpath / f"{i}.mp4").write_bytes(b"\0")


def _real_rows(task_dir: str, split: str) -> list[list[str]]:
    return [line.split() for line in (LVU_REAL / task_dir / f"{split}.csv").read_text().splitlines()[1:]]


@pytest.mark.parametrize("task", ["genre", "like", "view"])
def test_lvu_real_label_files_verbatim(task, tmp_path):
    """The real files of three tasks, every video present: every row parses, counts as reference.md
    (genre 3063/597/647, like 658/142/140, view 577/124/126), targets as the LVU code computes them."""
    d = LVU_DIRS[task]
    rows = {s: _real_rows(d, s) for s in ("train", "val", "test")}
    _touch_videos(tmp_path / "v", [r[-2] for rs in rows.values() for r in rs])
    items, classes, rejected = datasets.lvu_items(str(LVU_REAL), str(tmp_path / "v"), task)
    assert rejected == []
    assert Counter(i.split for i in items) == {s: len(rs) for s, rs in rows.items()}
    assert {"genre": (3063, 597, 647), "like": (658, 142, 140), "view": (577, 124, 126)}[task] == \
        tuple(len(rows[s]) for s in ("train", "val", "test"))
    by_key = {i.key: i for i in items}
    for split, rs in rows.items():
        for r in rs:
            it = by_key[r[-2]]  # the video is the second-to-last field, never the IMDb id
            assert it.split == split and it.extra["imdb_id"] == r[-1] and Path(it.path).name == f"{r[-2]}.mp4"
            if task == "genre":
                assert it.label == int(r[0]) and classes[it.label] == r[1] == it.label_name
            elif task == "like":
                like, dislike = float(r[0]), float(r[1])
                assert it.label == pytest.approx(10 * like / (like + dislike) - 9.138220535629456, abs=1e-12)
            else:
                assert it.label == pytest.approx(math.log(float(r[0])) - 11.76425435683139, abs=1e-12)
    if task == "genre":
        assert classes == ["Comedy", "Action-Crime-Adventure", "Romance", "Thriller-Horror"]
        assert Counter(i.label for i in items if i.split == "train") == {0: 809, 1: 751, 2: 731, 3: 772}
    else:
        assert classes == []
    assert any(i.key.startswith("-") for i in items)  # ids starting with '-' are kept as they are


def test_lvu_partial_download_rejects_missing_videos(tmp_path, clip_pool):
    fx = real_formats.build_lvu("genre", clip_pool, tmp_path)
    items, _, rejected = datasets.lvu_items(str(tmp_path / "lvu_1.0"), str(tmp_path / "videos"), "genre")
    assert Counter(i.split for i in items) == fx["expect"]["splits"]
    assert len(rejected) == fx["expect"]["rejected"] and {r["reason"] for r in rejected} == {"video not found"}


@pytest.mark.parametrize("task", ["relationship", "speaking", "scene", "director", "writer", "year"])
def test_lvu_other_tasks_in_the_real_format(task, tmp_path, clip_pool):
    """Header ``class_id class_name youtube_id imdb_id``; class names as LVU writes them (words, person
    ids, years); the class count is the task's even where ids are absent (director, writer)."""
    fx = real_formats.build_lvu(LVU_DIRS[task], clip_pool, tmp_path)
    items, classes, rejected = datasets.lvu_items(str(tmp_path / "lvu_1.0"), str(tmp_path / "videos"), task)
    assert len(classes) == datasets.LVU_TASKS[task][1]
    assert Counter(i.split for i in items) == fx["expect"]["splits"]
    reasons = sorted(r["reason"] for r in rejected)
    assert len(rejected) == fx["expect"]["rejected"]
    assert any(r.startswith("malformed row: 5 fields, expected 4") for r in reasons)
    assert any("unknown class id 99" in r for r in reasons)
    assert reasons.count("video not found") == 3
    for it in items:
        assert classes[it.label] == it.label_name
    if task == "director":
        assert classes[3] == "class_3" and classes[0] == "nm0000229"


def test_lvu_wrong_task_file_is_a_clear_error(tmp_path):
    with pytest.raises(datasets.DatasetError, match="expected the header 'like_count dislike_count youtube_id"):
        datasets.lvu_items(str(LVU_REAL / "genre"), str(tmp_path), "like")
    with pytest.raises(datasets.DatasetError, match="allowed values"):
        datasets.lvu_items(str(LVU_REAL), str(tmp_path), "mood")
    r = subprocess.run([sys.executable, "tools/make_shards.py", "lvu", "--labels", str(tmp_path / "nope"), "--videos",
                        str(tmp_path), "--task", "genre", "--out", str(tmp_path / "o")], cwd=REPO, capture_output=True,
                       text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("make_shards.py lvu: error: lvu --labels: no {train,val,test}.csv")


def test_kinetics_csvs_and_downloader_layout(tmp_path, clip_pool):
    fx = real_formats.build_kinetics(clip_pool, tmp_path)
    args = build_parser().parse_args(["kinetics", *fx["args"], "--out", str(tmp_path / "o")])
    items, classes, rejected = collect(args)
    assert classes == fx["expect"]["classes"]
    assert Counter(i.split for i in items) == fx["expect"]["splits"]
    test = [i for i in items if i.split == "test"]
    assert test and all(i.label is None and i.label_name is None for i in test)  # the test CSV has no label
    for it in items:
        if it.split != "test":
            assert classes[it.label] == it.label_name and f"/{it.label_name}/" in it.path
        assert Path(it.path).name == f"{it.key}.mp4" and it.start is None  # trimmed clips: no cut
    assert any(i.key.startswith("-") for i in items)
    assert sorted(r["reason"].split(":")[0] for r in rejected) == ["malformed row 9", "video not found"]


def test_coin_json(tmp_path, clip_pool):
    fx = real_formats.build_coin(clip_pool, tmp_path)
    items, classes, rejected = datasets.coin_items(str(tmp_path / "COIN.json"), str(tmp_path / "videos"))
    assert len(classes) == 180 and classes[17] == "MakeBurger" and classes[5] == "recipe_5"
    assert Counter(i.split for i in items) == {"train": fx["expect"]["train_and_val"], **fx["expect"]["splits"]}
    assert all(classes[i.label] == i.label_name for i in items) and items[0].extra["annotation"][0]["segment"]
    assert sorted(r["reason"].split(":")[0] for r in rejected) == ["malformed entry", "video not found"]


def test_breakfast_one_sample_per_recording(tmp_path, clip_pool):
    fx = real_formats.build_breakfast(clip_pool, tmp_path)
    items, classes, rejected = datasets.breakfast_items(fx["args"][1])
    assert len(items) == 12  # 15 video files: three stereo pairs counted once
    stereo = [i for i in items if i.extra["camera"] == "stereo"]
    assert len(stereo) == 3 and all(i.path.endswith("_ch0.avi") and i.extra["channels"] == ["ch0", "ch1"]
                                    for i in stereo)
    assert {i.key for i in items if i.extra["person"] == "P03"} == {"P03_cam01_cereals", "P03_stereo_cereals"}
    for it in items:
        person = int(it.extra["person"][1:])
        assert it.split == ("train" if person <= 46 else "test") and it.group == it.extra["person"]
        assert classes[it.label] == it.label_name
    assert sorted(r["reason"] for r in rejected) == [
        "person P60 outside P03-P54",
        f"unknown activity 'bake'; Breakfast has {', '.join(datasets.BREAKFAST_ACTIVITIES)}"]


def test_charades_csvs(tmp_path, clip_pool):
    fx = real_formats.build_charades(clip_pool, tmp_path)
    args = build_parser().parse_args(["charades", *fx["args"], "--out", str(tmp_path / "o")])
    items, classes, rejected = collect(args)
    assert len(classes) == 157 and classes[0] == "Holding some clothes"
    raw = {r["id"]: r for split in ("train", "test")
           for r in csv.DictReader(open(tmp_path / f"Charades_v1_{split}.csv", newline=""))}
    assert Counter(i.split for i in items) == {"train": 8, "test": 3}
    for it in items:
        r = raw[it.key]
        want = sorted({int(a.split()[0][1:]) for a in r["actions"].split(";") if a})
        assert it.label == want and it.extra["descriptions"] == r["descriptions"]
    assert any(i.label == [] for i in items)  # a video with no action is a valid all-negative sample
    assert sorted(r["reason"] for r in rejected) == ["malformed row: unknown class 'c999'", "video not found"]


def test_user_csv_rows_and_rejections(tmp_path):
    (tmp_path / "v.csv").write_text("path,label,split,start,end\na/x.mp4,dog,train,0,2\na/x.mp4,dog,train,2,4\n"
                                    "b.mp4,cat,,,\nc.mp4,,train,,\nd.mp4,cat,test,5,1\n")
    items, classes, rejected = datasets.csv_items(str(tmp_path / "v.csv"), "/r")
    assert classes == ["cat", "dog"]
    assert [(i.key, i.start, i.end, i.split, i.label, i.group) for i in items] == [
        ("a_x_00000000", 0.0, 2.0, "train", 1, "a/x.mp4"), ("a_x_00002000", 2.0, 4.0, "train", 1, "a/x.mp4"),
        ("b", None, None, "train", 0, "b.mp4")]
    assert [r["reason"] for r in rejected] == ["malformed row: empty path or label", "malformed row: end 1.0 <= start 5.0"]


def _items(n_videos: int, clips: int, classes: int) -> list[Item]:
    return [Item(key=f"v{v}_{c}", path="x", split="train", label=v % classes, group=f"v{v}")
            for v in range(n_videos) for c in range(clips)] + \
        [Item(key=f"t{v}", path="x", split="test", label=0, group=f"t{v}") for v in range(5)]


def test_carve_val_by_video_stratified_deterministic():
    a, b = _items(100, 3, 4), _items(100, 3, 4)
    info = datasets.carve_val(a, 0.1)
    datasets.carve_val(b, 0.1)
    assert [i.split for i in a] == [i.split for i in b]  # deterministic
    assert info["videos"] == 10 and info["samples"] == 30 and info["stratified_by_class"]
    val_groups = {i.group for i in a if i.split == "val"}
    assert len(val_groups) == 10
    assert not val_groups & {i.group for i in a if i.split == "train"}  # no video on both sides
    per_class = Counter(i.label for i in a if i.split == "val")  # samples: 3 clips per video
    assert set(per_class) == {0, 1, 2, 3} and set(per_class.values()) <= {6, 9}  # 25 videos/class: 2.5 -> 2 or 3
    assert all(i.split == "test" for i in a if i.key.startswith("t"))  # test untouched
    c = _items(100, 3, 4)
    datasets.carve_val(c, 0.1, seed=1)
    assert {i.group for i in c if i.split == "val"} != val_groups
    with_val = _items(10, 1, 2)
    with_val[0].split = "val"
    assert datasets.carve_val(with_val, 0.1) is None  # the dataset's own val split is kept
    assert datasets.carve_val(_items(10, 1, 2), 0.0) is None


def test_make_shards_records_the_carved_split(tmp_path, clip_pool):
    fx = real_formats.build_coin(clip_pool, tmp_path / "coin")
    out = tmp_path / "shards"
    r = subprocess.run([sys.executable, "tools/make_shards.py", "coin", *fx["args"], "--out", str(out),
                        "--val-fraction", "0.34", "--no-progress", "--fps", "2", "--short-side", "48"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["val_carved"]["videos"] == 3 and m["val_carved"]["of_train_videos"] == 9
    assert {s: v["num_samples"] for s, v in m["splits"].items()} == {"train": 6, "val": 3, "test": 3}
    assert "carved 'val' from train - 3 of 9 training videos" in r.stdout
    assert "samples per split: test 3, train 6, val 3" in r.stdout
    rejected = [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == 2 and all(x["reason"] for x in rejected)
