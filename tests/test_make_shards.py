"""tools/make_shards.py on real footage: demo shards read back with webdataset and with DALI and
compared with ffmpeg's decode of the sources; bad inputs rejected without aborting; resume."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from tests.conftest import run_make_shards
from tests.videoref import ffmpeg_frames, make_clip, psnr, pyav_frames


def _manifest(d: Path) -> dict:
    return json.loads((d / "manifest.json").read_text())


def _samples(d: Path, split: str) -> list[dict]:
    urls = [str(d / s) for s in _manifest(d)["splits"][split]["shards"]]
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def test_demo_manifest_and_time_split(demo_shards):
    m = _manifest(demo_shards)
    assert m["classes"] == ["meadow", "burrow", "rodents", "credits", "street", "talking_head"]
    assert set(m["splits"]) == {"train", "val", "test", "pretrain"}
    spans: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for split in ("train", "val", "test"):
        samples = _samples(demo_shards, split)
        assert len(samples) == m["splits"][split]["num_samples"] > 0
        labels = set()
        for s in samples:
            meta = json.loads(s["json"])
            assert m["classes"][meta["label"]] == meta["label_name"]
            assert meta["num_frames"] == round(meta["duration"] * meta["fps"])
            labels.add(meta["label"])
            spans.setdefault((meta["source"], split), []).append(tuple(meta["segment"]))
        assert labels == set(range(len(m["classes"]))), f"every class appears in {split}"
    # no frame of a val/test clip overlaps any train clip of the same source
    for (src, split), segs in spans.items():
        if split == "train":
            continue
        for a0, a1 in segs:
            for b0, b1 in spans.get((src, "train"), []):
                assert a1 <= b0 + 1e-3 or b1 <= a0 + 1e-3, (src, split, (a0, a1), (b0, b1))
    assert (demo_shards / "rejected.jsonl").read_text() == ""


def test_demo_frames_match_ffmpeg_decode_webdataset(demo_shards):
    samples = _samples(demo_shards, "test")
    for s in samples[::4]:
        meta = json.loads(s["json"])
        frames = pyav_frames(s["mp4"])
        assert frames.shape == (meta["num_frames"], meta["height"], meta["width"], 3)
        ref = ffmpeg_frames(meta["source"], meta["segment"][0], meta["duration"], meta["fps"],
                            meta["width"], meta["height"])
        n = min(len(ref), len(frames))
        assert n >= len(frames) - 1
        assert psnr(frames[:n], ref[:n]) >= 30.0, meta["key"]


def test_demo_frames_match_ffmpeg_decode_dali_cpu(demo_shards):
    from nvidia.dali import fn, pipeline_def

    m = _manifest(demo_shards)
    urls = [str(demo_shards / s) for s in m["splits"]["val"]["shards"]]
    n = m["splits"]["val"]["num_samples"]

    @pipeline_def(batch_size=1, num_threads=2, device_id=None, seed=0)
    def pipe():
        video, meta = fn.readers.webdataset(paths=urls, ext=["mp4", "json"], missing_component_behavior="error",
                                            random_shuffle=False, name="reader")
        return fn.decoders.video(video, device="cpu"), meta

    p = pipe()
    p.build()
    seen = []
    for _ in range(n):
        frames, meta = p.run()
        frames, meta = np.array(frames[0]), json.loads(bytes(np.array(meta[0])))
        seen.append(meta["key"])
        assert frames.shape == (meta["num_frames"], meta["height"], meta["width"], 3)
        ref = ffmpeg_frames(meta["source"], meta["segment"][0], meta["duration"], meta["fps"],
                            meta["width"], meta["height"])
        k = min(len(ref), len(frames))
        assert psnr(frames[:k], ref[:k]) >= 30.0, meta["key"]
    assert sorted(seen) == sorted(json.loads(s["json"])["key"] for s in _samples(demo_shards, "val"))


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory, demo_footage):
    """Good real clips in unusual but valid forms, plus every kind of bad file."""
    d = tmp_path_factory.mktemp("mixed")
    bbb, bikes, car = demo_footage["bbb"], demo_footage["bikes"], demo_footage["carphone"]
    good = {
        "h264.mp4": make_clip(str(d / "h264.mp4"), bikes, 0, 3, "-c:v", "libx264", "-an"),
        "msmpeg4.avi": make_clip(str(d / "msmpeg4.avi"), car, 0, 3, "-c:v", "msmpeg4v2", "-an"),
        "mpeg4.avi": make_clip(str(d / "mpeg4.avi"), bikes, 2, 3, "-c:v", "mpeg4", "-an"),
        "cinepak.avi": make_clip(str(d / "cinepak.avi"), car, 0, 2, "-vf", "scale=160:120", "-c:v", "cinepak", "-an"),
        "oddfps.mp4": make_clip(str(d / "oddfps.mp4"), bbb, 40, 3, "-vf", "fps=12.5,scale=320:-2", "-c:v", "libx264", "-an"),
        "ntsc.mkv": make_clip(str(d / "ntsc.mkv"), bbb, 215, 3, "-vf", "fps=30000/1001,scale=320:-2", "-c:v", "libx264", "-an"),
    }
    # broken first GOP: a 4-s H.264 stream (keyframe every 0.5 s) whose first 300 bytes of coded
    # data after the header are garbage -> the first frames fail, the rest decode
    gop = make_clip(str(d / "gop_src.h264"), bbb, 300, 4, "-vf", "scale=320:-2", "-c:v", "libx264", "-g", "12",
                    "-bsf:v", "h264_mp4toannexb", "-an", "-f", "h264")
    raw = bytearray(Path(gop).read_bytes())
    raw[2000:2300] = os.urandom(300)
    Path(d / "gop_src.h264").write_bytes(raw)
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-r", "24", "-i", str(d / "gop_src.h264"),
                    "-c", "copy", str(d / "brokengop.mp4")], check=True)
    os.unlink(d / "gop_src.h264")
    good["brokengop.mp4"] = str(d / "brokengop.mp4")

    full = make_clip(str(d / "full.mp4"), bikes, 0, 8, "-c:v", "libx264", "-an")
    data = Path(full).read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])  # moov at the end: cut in the mdat
    os.unlink(full)
    full = make_clip(str(d / "full.mp4"), bikes, 0, 8, "-c:v", "libx264", "-movflags", "+faststart", "-an")
    data = Path(full).read_bytes()
    (d / "cutshort.mp4").write_bytes(data[: len(data) // 3])  # moov first: opens, then the data ends
    os.unlink(full)
    (d / "empty.mp4").write_bytes(b"")
    (d / "notvideo.mp4").write_text("this is a text file, not a video\n" * 100)
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", "sine=frequency=440:duration=3",
                    "-c:a", "aac", "-f", "mp4", str(d / "audioonly.mp4")], check=True)
    # undecodable stream: a valid container whose coded video data is random bytes
    und = make_clip(str(d / "und_src.mp4"), car, 0, 3, "-c:v", "libx264", "-movflags", "+faststart", "-an")
    raw = bytearray(Path(und).read_bytes())
    mdat = raw.find(b"mdat") + 8
    raw[mdat:] = os.urandom(len(raw) - mdat)
    (d / "undecodable.mp4").write_bytes(raw)
    os.unlink(und)
    bad = {"truncated.mp4": "truncated or corrupt MP4/MOV file", "cutshort.mp4": "truncated or partly undecodable",
           "empty.mp4": "zero-byte file", "notvideo.mp4": "not a readable media file",
           "audioonly.mp4": "no video stream (streams: audio)", "undecodable.mp4": "could not decode"}
    rows = ["path,label,split"] + [f"{n},good{i % 2},train" for i, n in enumerate(good)] + \
           [f"{n},bad,train" for n in bad]
    (d / "videos.csv").write_text("\n".join(rows) + "\n")
    return d, good, bad


def test_bad_inputs_rejected_good_ones_sharded(mixed_dir, tmp_path):
    d, good, bad = mixed_dir
    out = tmp_path / "out"
    r = run_make_shards("csv", "--csv", str(d / "videos.csv"), "--root", str(d), "--out", str(out), "--workers", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{len(good)} sharded, {len(bad)} rejected" in r.stdout
    rejected = {Path(x["path"]).name: x["reason"] for x in map(json.loads, (out / "rejected.jsonl").read_text().splitlines())}
    assert set(rejected) == set(bad)
    for name, word in bad.items():
        assert word in rejected[name], (name, rejected[name])
        assert str(d) not in rejected[name], "reasons must not depend on the path"
    # val is carved from what was sharded (the CSV has no val rows): never a rejected file, never empty
    sharded = _samples(out, "train") + _samples(out, "val")
    assert _manifest(out)["splits"]["val"]["num_samples"] == 1
    keys = {json.loads(s["json"])["source"] for s in sharded}
    assert {Path(k).name for k in keys} == set(good)
    for s in sharded:  # every sharded clip decodes to its recorded frame count
        meta = json.loads(s["json"])
        assert len(pyav_frames(s["mp4"])) == meta["num_frames"] > 0
        assert meta["codec"] == "vp9"


def test_segment_cut_and_resume(mixed_dir, tmp_path):
    d, good, _ = mixed_dir
    (d / "seg.csv").write_text("path,label,split,start,end\nntsc.mkv,a,train,0.5,2.5\nh264.mp4,b,val,1,2\n")
    out = tmp_path / "seg"
    args = ("csv", "--csv", str(d / "seg.csv"), "--root", str(d), "--out", str(out), "--fps", "10", "--short-side", "96")
    assert run_make_shards(*args).returncode == 0
    train = [json.loads(s["json"]) for s in _samples(out, "train")]
    assert [t["num_frames"] for t in train] == [20] and min(train[0]["width"], train[0]["height"]) == 96
    assert train[0]["segment"][0] == 0.5
    # a stale temporary shard from a crashed run is never listed; finished shards are not redone
    (out / "train-000001.tar.tmp").write_bytes(b"partial")
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    r = run_make_shards(*args)
    assert r.returncode == 0 and "0 transcoded" in r.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == before
    assert "train-000001.tar.tmp" not in json.dumps(_manifest(out))
    # removing a finished shard makes the re-run rebuild exactly that one
    os.unlink(out / "val-000000.tar")
    r = run_make_shards(*args)
    assert r.returncode == 0 and "1 transcoded" in r.stdout and (out / "val-000000.tar").exists()


def test_h264_and_copy_codecs(mixed_dir, tmp_path):
    d, _, _ = mixed_dir
    (d / "one.csv").write_text("path,label\nh264.mp4,a\n")
    for codec in ("h264", "copy"):
        out = tmp_path / codec
        assert run_make_shards("csv", "--csv", str(d / "one.csv"), "--root", str(d), "--out", str(out),
                               "--codec", codec).returncode == 0
        (s,) = _samples(out, "train")
        assert json.loads(s["json"])["codec"] == "h264"
        assert len(pyav_frames(s["mp4"])) == json.loads(s["json"])["num_frames"]
