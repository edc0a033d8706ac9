"""Dataset parsers: annotation formats -> items with the right labels, splits and segments."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from tools import datasets
from tools.make_shards import build_parser, collect


def _touch(p: Path) -> str:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"\0")
    return str(p)


def test_kinetics_trimmed_full_and_missing(tmp_path):
    v = tmp_path / "videos"
    _touch(v / "abc_000010_000020.mp4")
    _touch(v / "sub" / "xyz.mkv")
    (tmp_path / "k.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                    "riding,abc,10,20,train\nabseiling,xyz,5,15,validate\nzumba,nope,0,10,train\n")
    items, classes, rej = datasets.kinetics_items(str(tmp_path / "k.csv"), str(v))
    assert classes == ["abseiling", "riding", "zumba"]
    by = {i.extra["youtube_id"]: i for i in items}
    assert (by["abc"].start, by["abc"].label, by["abc"].split) == (None, 1, "train")
    assert (by["xyz"].start, by["xyz"].end, by["xyz"].split, by["xyz"].label) == (5.0, 15.0, "val", 0)
    assert [r["reason"] for r in rej] == ["video not found"]


def test_coin(tmp_path):
    v = tmp_path / "v"
    _touch(v / "a1.mp4"), _touch(v / "b2.mp4")
    db = {"database": {
        "a1": {"class": "MakeTea", "recipe_type": 2, "subset": "training", "duration": 10, "annotation": [{"id": "1"}]},
        "b2": {"class": "ChangeTire", "recipe_type": 0, "subset": "testing", "duration": 10, "annotation": []},
        "c3": {"class": "Other", "recipe_type": 1, "subset": "testing", "duration": 10, "annotation": []}}}
    (tmp_path / "COIN.json").write_text(json.dumps(db))
    items, classes, rej = datasets.coin_items(str(tmp_path / "COIN.json"), str(v))
    assert classes == ["ChangeTire", "Other", "MakeTea"]
    assert {(i.key, i.label, i.split) for i in items} == {("a1", 2, "train"), ("b2", 0, "test")}
    assert rej[0]["key"] == "c3"


def test_breakfast_split(tmp_path):
    for p in ["P03/cam01/P03_cereals.avi", "P46/webcam01/P46_tea.avi", "P47/cam02/P47_friedegg.avi",
              "P54/stereo/P54_stereo01_scrambledegg_ch0.avi", "P60/cam01/P60_tea.avi"]:
        _touch(tmp_path / p)
    items, classes, _ = datasets.breakfast_items(str(tmp_path), val_people=(40, 46))
    got = {(i.extra["person"], i.label_name, i.split) for i in items}
    assert got == {("P03", "cereals", "train"), ("P46", "tea", "val"), ("P47", "friedegg", "test"),
                   ("P54", "scrambledegg", "test")}
    assert all(classes[i.label] == i.label_name for i in items)


def test_lvu_classification_and_regression(tmp_path):
    v = tmp_path / "v"
    _touch(v / "c1.mp4"), _touch(v / "c2.mp4")
    (tmp_path / "genre").mkdir(), (tmp_path / "view_count").mkdir(), (tmp_path / "like_ratio").mkdir()
    (tmp_path / "genre" / "train.csv").write_text("genre youtube_id clip\n3 yt1 c1\n1 yt2 c2\n")
    (tmp_path / "view_count" / "test.csv").write_text("view youtube_id clip\n100000 yt1 c1\n")
    (tmp_path / "like_ratio" / "val.csv").write_text("like dislike youtube_id clip\n90 10 yt2 c2\n")
    items, classes, _ = datasets.lvu_items(str(tmp_path), str(v), "genre")
    assert len(classes) == 4 and [(i.key, i.label) for i in items] == [("c1", 3), ("c2", 1)]
    (it,) = datasets.lvu_items(str(tmp_path), str(v), "view")[0]
    assert it.split == "test" and it.label == pytest.approx(math.log(100000) - 11.7643)
    (it,) = datasets.lvu_items(str(tmp_path), str(v), "like")[0]
    assert it.label == pytest.approx(10 * 90 / 100 - 9.1382)
    with pytest.raises(ValueError, match="allowed values"):
        datasets.lvu_items(str(tmp_path), str(v), "mood")


def test_charades_multilabel(tmp_path):
    v = tmp_path / "v"
    _touch(v / "46GP8.mp4")
    (tmp_path / "train.csv").write_text("id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n"
                                        '46GP8,HR43,Kitchen,6,7,Yes,s,o,d,"c092 11.90 21.20;c147 0.00 12.60;c092 30 31",33.67\n'
                                        "MISSING,HR43,Kitchen,6,7,Yes,s,o,d,,10\n")
    items, classes, rej = datasets.charades_items(str(tmp_path / "train.csv"), None, str(v))
    (it,) = items
    assert len(classes) == 157 and it.label == [92, 147]
    assert it.extra["actions"][0] == [92, 11.9, 21.2]
    assert rej[0]["key"] == "MISSING"


def test_csv_and_cli_dispatch(tmp_path):
    (tmp_path / "v.csv").write_text("path,label,split,start,end\na/x.mp4,dog,train,0,2\na/x.mp4,dog,train,2,4\nb.mp4,cat,,,\n")
    args = build_parser().parse_args(["csv", "--csv", str(tmp_path / "v.csv"), "--root", "/r", "--out", "o"])
    items, classes, _ = collect(args)
    assert classes == ["cat", "dog"]
    assert [(i.key, i.start, i.end, i.split, i.label) for i in items] == [
        ("a_x_00000000", 0.0, 2.0, "train", 1), ("a_x_00002000", 2.0, 4.0, "train", 1), ("b", None, None, "train", 0)]
    assert items[0].path == os.path.join("/r", "a/x.mp4")
