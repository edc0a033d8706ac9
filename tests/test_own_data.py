"""A user's own footage through the documented path (issue 23): make_shards.py csv -> the trainer's
preflight -> export -> predict.py, on inputs built here the way real files go wrong - unreadable
files, one recording per class, zeros over the middle of an MP4, a source replaced at the same path,
colliding file names, Latin-1 and BOM CSVs, an AVI whose header overstates its frame count, an
image, a reused run directory, a busy rendezvous port. Every case ends in a clear line or a
correct result, never a traceback or a silent wrong answer."""
from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from tests.conftest import run_make_shards
from tests.helpers import REPO, TINY, export_new_model, repack, stub_shards
from tests.videoref import ffmpeg_frames, psnr, pyav_frames

PY = sys.executable
SMALL = ["data.clip_seconds=1.0", "data.frames=2", "data.image_size=64", "model.width=32", "model.depth=1",
         "model.state_size=8"]
SOURCES = ("testsrc2", "smptebars", "rgbtestsrc", "mandelbrot", "cellauto", "life")


def lavfi(dst: Path, source: str = "testsrc2", seconds: float = 2.0, rate: int = 10, size: str = "160x120",
          *codec: str) -> Path:
    """A real encoded video of an FFmpeg test source (H.264 in MP4 unless ``codec`` says otherwise)."""
    codec = codec or ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p")
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", f"{source}=size={size}:rate={rate}",
                    "-t", str(seconds), *codec,
                    str(dst)], check=True)
    return dst


def zero_middle(src: Path, dst: Path) -> Path:
    """``src`` with zeros written over the middle third of its bytes (the moov box, at the end, survives)."""
    raw = bytearray(src.read_bytes())
    a, b = len(raw) // 3, 2 * len(raw) // 3
    raw[a:b] = bytes(b - a)
    dst.write_bytes(raw)
    return dst


def manifest(d: Path) -> dict:
    return json.loads((d / "manifest.json").read_text())


def samples(d: Path, split: str) -> list[dict]:
    urls = [str(d / s) for s in manifest(d)["splits"].get(split, {}).get("shards", [])]
    return [json.loads(s["json"]) | {"mp4": s["mp4"]} for s in wds.WebDataset(urls, shardshuffle=False,
                                                                           empty_check=False)] if urls else []


def shard(csv: Path, root: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_make_shards("csv", "--csv", str(csv), "--root", str(root), "--out", str(out), "--fps", "4",
                           "--short-side", "48", "--workers", "2", *extra)


# ----------------------------------------------------------------------------- make_shards


def test_carve_is_made_from_what_was_sharded(tmp_path):
    """Unreadable training files, a class with one training video, a class whose only training file
    is unreadable, a frozen-gap MP4: val comes from sharded videos only and is not empty, no class is
    carved out of train, the class with nothing left is a warning here and an error at preflight."""
    v = tmp_path / "videos"
    v.mkdir()
    for i, src in enumerate(SOURCES[:3]):
        lavfi(v / f"a{i}.mp4", src, 2.0)
    (v / "a3.mp4").write_text("not a video\n" * 50)  # unreadable training file of class a
    lavfi(v / "b0.mp4", "mandelbrot", 2.0)  # the only training video of class b
    (v / "c0.mp4").write_bytes(b"")  # the only training file of class c: unreadable
    for name, src in (("at", "life"), ("bt", "cellauto"), ("ct", "smptebars")):
        lavfi(v / f"{name}.mp4", src, 2.0)
    zero_middle(lavfi(tmp_path / "long.mp4", "testsrc2", 20.0, 25, "160x120", "-c:v", "libx264", "-g", "25",
                      "-preset", "ultrafast", "-pix_fmt", "yuv420p"), v / "frozen.mp4")
    rows = [f"a{i}.mp4,a,train" for i in range(4)] + ["b0.mp4,b,train", "c0.mp4,c,train", "at.mp4,a,test",
                                                    "bt.mp4,b,test", "ct.mp4,c,test", "frozen.mp4,a,test"]
    (v / "videos.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    out = tmp_path / "shards"
    r = shard(v / "videos.csv", v, out, "--val-fraction", "0.34")
    assert r.returncode == 0, r.stderr[-2000:]
    m = manifest(out)
    val, train = samples(out, "val"), samples(out, "train")
    assert len(val) == 1 and Path(val[0]["source"]).name in {"a0.mp4", "a1.mp4", "a2.mp4"}  # never a rejected file
    assert {s["label_name"] for s in train} == {"a", "b"}  # b keeps its single video
    assert m["val_carved"]["classes_without_val"] == ["b"]
    assert m["classes_without_train"] == ["c"]
    assert m["splits"]["train"]["class_counts"] == [2, 1, 0]
    rejected = {Path(x["path"]).name: x["reason"] for x in map(json.loads, (out / "rejected.jsonl").read_text().splitlines())}
    assert set(rejected) == {"a3.mp4", "c0.mp4", "frozen.mp4"}
    # the frozen gap: about a third of the coded frames do not decode
    assert "partly undecodable" in rejected["frozen.mp4"] and "frozen frame" in rejected["frozen.mp4"]
    last = r.stdout.strip().splitlines()[-3:]
    assert "7 sharded, 3 rejected" in last[0] and "no training sample" in last[2] and ": c." in last[2]
    assert "warning: 1 class(es) have no val sample" in r.stdout and "b" in r.stdout
    # the trainer refuses the shards before anything is written, naming the class
    run = tmp_path / "run"
    t = subprocess.run([PY, "trainer/main.py", "--config", "configs/demo_finetune.yaml", f"data.shards={out}",
                        f"run.dir={run}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert t.returncode == 2 and len(t.stderr.strip().splitlines()) == 1, t.stderr[-2000:]
    assert "no training sample" in t.stderr and ": c." in t.stderr and not run.exists()


def test_carve_keeps_single_video_classes_and_says_when_it_cannot():
    from s5video.tools.datasets import carve_val
    from s5video.tools.shardwriter import Item
    one_each = [Item(key=f"k{c}", path="x", split="train", label=c, group=f"g{c}") for c in range(3)]
    info = carve_val(one_each, 0.5)
    assert info["videos"] == 0 and "single one" in info["reason"] and {i.split for i in one_each} == {"train"}
    # multi-label: a video is not moved when it holds a class's last training video
    ml = [Item(key="m0", path="x", split="train", label=[0, 1], group="m0"),
          Item(key="m1", path="x", split="train", label=[0], group="m1"),
          Item(key="m2", path="x", split="train", label=[0], group="m2")]
    info = carve_val(ml, 0.5)
    assert info["videos"] >= 1 and ml[0].split == "train" and {i.split for i in ml[1:]} >= {"val"}
    # multi-label sets that are all different (Charades) still share classes: one video can move
    ml = [Item(key=f"s{i}", path="x", split="train", label=ls, group=f"s{i}") for i, ls in
          enumerate(([0, 1], [0, 2], [1, 2]))]
    info = carve_val(ml, 0.34)
    assert info["videos"] == 1 and not info["stratified_by_class"]
    assert all(sum(c in i.label for i in ml if i.split == "train") >= 1 for c in range(3))


def test_replaced_source_is_encoded_again(tmp_path):
    v = tmp_path / "videos"
    v.mkdir()
    lavfi(v / "r1.mp4", "testsrc2", 3.0)
    lavfi(v / "r2.mp4", "smptebars", 2.0)
    (v / "videos.csv").write_text("path,label\nr1.mp4,x\nr2.mp4,y\n")
    out = tmp_path / "shards"
    assert shard(v / "videos.csv", v, out, "--val-fraction", "0").returncode == 0
    before = {s["key"]: s["num_frames"] for s in samples(out, "train")}
    assert before == {"r1": 12, "r2": 8}
    old = os.stat(v / "r1.mp4")
    shutil.copy(v / "r1.mp4", tmp_path / "r1_old.mp4")
    lavfi(v / "r1.mp4", "rgbtestsrc", 4.0)  # another video at the same path, its old mtime restored
    os.utime(v / "r1.mp4", ns=(old.st_atime_ns, old.st_mtime_ns))
    r = shard(v / "videos.csv", v, out, "--val-fraction", "0")
    assert r.returncode == 0 and "1 transcoded" in r.stdout, r.stdout
    (new,) = [s for s in samples(out, "train") if s["key"] == "r1"]
    assert new["num_frames"] == 16  # 4 s at 4 fps: the new file's
    ref = ffmpeg_frames(str(v / "r1.mp4"), 0.0, 4.0, 4, new["width"], new["height"])
    frames = pyav_frames(new["mp4"])
    assert psnr(frames[:len(ref)], ref[:len(frames)]) >= 30.0  # the new file's pixels, not the old ones'
    old_ref = ffmpeg_frames(str(tmp_path / "r1_old.mp4"), 0.0, 3.0, 4, new["width"], new["height"])
    assert psnr(frames[:len(old_ref)], old_ref) < 20.0
    tars = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    r = shard(v / "videos.csv", v, out, "--val-fraction", "0")
    assert "0 transcoded" in r.stdout and {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == tars


def test_colliding_names_duplicate_rows_and_csv_encodings(tmp_path):
    v = tmp_path / "videos"
    v.mkdir()
    for name, src in (("x y.mp4", "testsrc2"), ("x_y.mp4", "smptebars"), ("x_y_1.mp4", "rgbtestsrc"),
                      ("café.mp4", "mandelbrot")):
        lavfi(v / name, src, 2.0)
    rows = ["x y.mp4,p,train", "x_y.mp4,q,train", "x_y_1.mp4,p,train", "x_y.mp4,q,train", "x_y_1.mp4,p,test",
            "café.mp4,q,train"]
    keys = []
    for n, (order, enc) in enumerate(((rows, "utf-8"), (list(reversed(rows)), "utf-8-sig"))):
        (v / f"v{n}.csv").write_text("path,label,split\n" + "\n".join(order) + "\n", encoding=enc)
        out = tmp_path / f"out{n}"
        r = shard(v / f"v{n}.csv", v, out, "--val-fraction", "0")
        assert r.returncode == 0, r.stderr[-2000:]
        assert "5 sharded, 0 rejected" in r.stdout
        assert "warning: duplicate row:" in r.stdout and "x_y.mp4 (train) is listed 2 times" in r.stdout
        assert "map to the sample key 'x_y'" in r.stdout
        assert "the same footage is in train and test" in r.stdout and "x_y_1.mp4" in r.stdout
        keys.append(sorted((s["key"], Path(s["source"]).name) for sp in ("train", "test") for s in samples(out, sp)))
    assert keys[0] == keys[1]  # the same keys whatever the row order (and with a BOM)
    assert len({k for k, _ in keys[0]}) == 5
    latin = v / "latin1.csv"
    latin.write_bytes("path,label\ncafé.mp4,q\n".encode("latin-1"))
    r = shard(latin, v, tmp_path / "out_latin")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "latin1.csv is not UTF-8" in r.stderr and "iconv" in r.stderr
    utf16 = v / "utf16.csv"
    utf16.write_text("path,label\nx_y.mp4,q\n", encoding="utf-16")
    r = shard(utf16, v, tmp_path / "out_utf16")
    assert r.returncode == 2 and "is UTF-16 text" in r.stderr


# ----------------------------------------------------------------------------- the trainer


def _main(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "trainer/main.py", "--config", "configs/demo_finetune.yaml", *TINY, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def finetuned(demo_shards, tmp_path_factory):
    """A 2-step single-process finetune on the demo shards, checkpointed."""
    run = tmp_path_factory.mktemp("own") / "run"
    r = _main(f"data.shards={demo_shards}", f"run.dir={run}", "train.max_steps=2", "train.eval_every_steps=100",
              "checkpoint.every_steps=1", "data.num_workers=0", "train.zero_stage=0")
    assert r.returncode == 0, r.stderr[-3000:]
    return run


def test_a_run_dir_belongs_to_one_run(finetuned, demo_shards, tmp_path):
    run = finetuned
    config = (run / "config.yaml").read_bytes()
    base = [f"run.dir={run}", "train.max_steps=3", "data.num_workers=0", "train.zero_stage=0",
            "train.eval_every_steps=100"]
    other = repack(demo_shards, tmp_path / "other", {})  # the same shards under another directory
    r = _main(f"data.shards={other}", *base)  # another dataset, same classes
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    assert f"run.dir: {run} holds a run of other data" in r.stderr and "data.shards" in r.stderr
    four = stub_shards(tmp_path / "four", {"train": 8, "val": 4, "test": 4}, ["a", "b", "c", "d"])
    r = _main(f"data.shards={four}", *base)  # another class count
    assert r.returncode == 2 and "classes 6" in r.stderr and "-> 4" in r.stderr, r.stderr[-2000:]
    r = _main(f"data.shards={demo_shards}", *base, "model.width=48")
    assert r.returncode == 2 and "model.width 32 -> 48" in r.stderr
    assert (run / "config.yaml").read_bytes() == config  # nothing was written by the refused runs
    # the same run continues; a deliberate change continues with the flag
    r = _main(f"data.shards={other}", *base, "run.allow_changed_config=true")
    assert r.returncode == 0 and "resumed from" in r.stdout + r.stderr, r.stderr[-2000:]


def test_init_from_another_class_count_reinitialises_the_head(finetuned, tmp_path, capsys):
    from s5video.models.factory import build_model, head_classes
    from s5video.trainer.config import ConfigError, load_config
    from s5video.trainer.preflight import _check_init_from
    from s5video.trainer.run import Trainer
    cfg = load_config(REPO / "configs/demo_finetune.yaml", [*TINY, f"run.init_from={finetuned}"])
    t = Trainer(cfg)
    t.rank = 0
    model = build_model(cfg.model, 1280, head_classes("finetune", "classification", 0, ["a", "b", "c", "d"]))
    head = {k: v.clone() for k, v in model.state_dict().items() if ".head." in k}
    t.init_from(model, str(finetuned))
    out = capsys.readouterr().out
    loaded = int(out.split("tensors loaded")[0].split()[-1])
    assert loaded > 0 and "reinitialised" in out and "head" in out
    assert all(torch.equal(model.state_dict()[k], v) for k, v in head.items())  # the head starts anew
    other = load_config(REPO / "configs/demo_finetune.yaml", [*TINY, "model.width=48", f"run.init_from={finetuned}"])
    with pytest.raises(ConfigError, match=r"another model \(model.width 32 there, 48 here\): no weight would load"):
        _check_init_from(other, Path(finetuned))


def test_bad_settings_are_one_line_errors(demo_shards, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    one = stub_shards(tmp_path / "one", {"train": 8, "val": 4, "test": 4}, ["only"])
    cases = [([f"run.dir={a_file}"], "run.dir: "), (["train.lr=nan"], "train.lr: must be a finite number"),
             (["data.num_workers=-1"], "data.num_workers: must be >= 0"),
             ([f"data.shards={one}"], "has one class (only)")]
    for overrides, msg in cases:
        shards = [] if any(o.startswith("data.shards") for o in overrides) else [f"data.shards={demo_shards}"]
        r = _main(*shards, f"run.dir={tmp_path / 'r'}", *overrides)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and msg in r.stderr, (overrides, r.stderr)


def test_busy_master_port_is_one_line(demo_shards, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        r = _main(f"data.shards={demo_shards}", f"run.dir={tmp_path / 'r'}", env={**env, "MASTER_PORT": str(port)})
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    assert f"MASTER_PORT: port {port}" in r.stderr and "--master_port" in r.stderr
    assert not (tmp_path / "r" / "config.yaml").exists()


# ----------------------------------------------------------------------------- predict.py


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    classes = ["meadow", "burrow", "rodents", "credits", "street", "talking_head"]
    return export_new_model(str(REPO / "configs/demo_finetune.yaml"), SMALL, classes,
                            tmp_path_factory.mktemp("export") / "model.safetensors")


def _predict(model: Path, *videos: Path, stride: str | None = None) -> tuple[int, list[dict], str, int]:
    """predict.py --json as a user runs it: (exit code, answers, stderr, max RSS in KiB)."""
    cmd = [PY, "tools/predict.py", "--model", str(model), "--json", *map(str, videos)] + \
        (["--stride", stride] if stride else [])
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(p.pid, 0)  # reaped here: its own peak RSS (KiB), not a sum over children
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        answers, errors = [json.loads(x) for x in out.read().splitlines() if x.strip()], err.read()
    return p.returncode, answers, errors, usage.ru_maxrss


def _lying_avi(src: Path, dst: Path, factor: int = 3) -> None:
    """``src`` (an AVI) with its main header's total frames and its video stream header's length
    multiplied by ``factor``: the header overstates the frame count, as some real AVIs do."""
    raw = bytearray(src.read_bytes())
    i = raw.find(b"avih") + 8
    total = struct.unpack_from("<I", raw, i + 16)[0]
    struct.pack_into("<I", raw, i + 16, total * factor)
    j = raw.find(b"strh") + 8
    assert raw[j:j + 4] == b"vids"
    length = struct.unpack_from("<I", raw, j + 32)[0]
    struct.pack_into("<I", raw, j + 32, length * factor)
    dst.write_bytes(raw)


def test_predict_answers_what_make_shards_accepts(exported, tmp_path):
    import av
    honest = lavfi(tmp_path / "honest.avi", "testsrc2", 4.0, 10, "160x120", "-c:v", "cinepak")
    _lying_avi(honest, tmp_path / "lying.avi")
    with av.open(str(tmp_path / "lying.avi")) as c:
        assert c.streams.video[0].frames == 120  # the header says 120; 40 decode
    frozen = zero_middle(lavfi(tmp_path / "src.mp4", "testsrc2", 20.0, 25, "160x120", "-c:v", "libx264", "-g", "25",
                               "-preset", "ultrafast", "-pix_fmt", "yuv420p"), tmp_path / "frozen.mp4")
    lavfi(tmp_path / "img.png", "testsrc2", 0.1, 10, "160x120", "-frames:v", "1")
    (tmp_path / "notes.mp4").write_text("not a video\n" * 20)
    rc, ans, err, _ = _predict(exported, honest, tmp_path / "lying.avi", frozen, tmp_path / "img.png",
                               tmp_path / "notes.mp4")
    assert rc == 1  # some files failed, the others are answered
    by = {Path(a["video"]).name: a for a in ans}
    assert by["lying.avi"]["duration_s"] == pytest.approx(4.0)  # decoded frames trusted over the header
    assert by["lying.avi"]["scores"] == pytest.approx(by["honest.avi"]["scores"], abs=1e-6)
    assert len(by["frozen.mp4"]["windows"]) >= 10 and "did not decode" in by["frozen.mp4"]["warnings"][0]
    assert by["img.png"]["error"] == "an image (png), not a video"
    assert "not a readable video" in by["notes.mp4"]["error"]
    assert "img.png: an image (png), not a video" in err


def test_predict_streams_windows_like_evaluation(exported, tmp_path):
    """The streamed windows equal evaluation's: plan_clips' windows over every decoded frame
    (data.cpu.decode_video), the evaluation transform, the exported model - computed here."""
    from s5video.data.clips import ClipSpec, plan_clips, spatial_transform
    from s5video.data.cpu import decode_video
    from s5video.models.exported import load_exported
    video = lavfi(tmp_path / "v.mp4", "testsrc2", 3.7, 10)
    rc, (ans,), err, _ = _predict(exported, video, stride="0.3")
    assert rc == 0, err
    model = load_exported(exported)
    frames = decode_video(video.read_bytes())
    plans = plan_clips(ClipSpec(mode="windows", frames=2, seconds=1.0, stride=0.3), len(frames), 10.0,
                       np.random.default_rng(0))
    clips = torch.stack([spatial_transform(torch.from_numpy(frames[p["video"][0]]), 64, model.encoder.mean,
                                           model.encoder.std, train=False, rng=None) for p in plans])
    probs = model(clips).softmax(-1)
    assert [w["start_s"] for w in ans["windows"]] == [round(p["video"][1][0], 3) for p in plans]
    assert np.allclose([w["scores"] for w in ans["windows"]], probs.numpy(), atol=1e-5)


def test_predict_memory_does_not_grow_with_length(exported, tmp_path):
    short = lavfi(tmp_path / "1min.mp4", "testsrc2", 60.0, 10)
    long = lavfi(tmp_path / "10min.mp4", "testsrc2", 600.0, 10)
    rc1, (a1,), _, rss1 = _predict(exported, short)
    rc2, (a2,), _, rss2 = _predict(exported, long)
    assert rc1 == rc2 == 0 and len(a2["windows"]) == 600 and len(a1["windows"]) == 60
    assert rss2 <= 1.2 * rss1, (rss1, rss2)


def test_truncated_model_file_is_one_line(exported, tmp_path):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(exported.read_bytes()[: exported.stat().st_size // 2])
    video = lavfi(tmp_path / "v.mp4", "testsrc2", 2.0)
    rc, _, err, _ = _predict(cut, video)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "not a complete safetensors file" in err, err
