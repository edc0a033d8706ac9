"""The frozen-feature regime: tokens read back through ffcv equal the encoder's on-the-fly output;
one checkpoint evaluated from the cache and from the video gives the same val and test metrics; a
finetune trains, validates and tests from the cache alone (no decoding: the shards are removed)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from s5video.data import build_loader
from s5video.data.clips import ClipSpec
from s5video.data.loader import VideoLoader
from s5video.models.encoders import EfficientNetLite0
from tests.helpers import TINY

REPO = Path(__file__).resolve().parents[1]
DATA = ["data.image_size=64", "data.frames=4", "data.clip_seconds=2.0", "data.eval_stride_seconds=1.0"]


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return r


def test_cached_windows_equal_on_the_fly(demo_shards, tmp_path):
    out = tmp_path / "features"
    _run("tools/extract_features.py", "--config", "configs/demo_finetune.yaml", "--out", str(out), "--splits", "val",
         f"data.shards={demo_shards}", *DATA, "data.eval_clip=windows")
    meta = json.loads((out / "val.beton.json").read_text())
    assert meta["clips"] == "windows" and meta["stride_seconds"] == 1.0 and meta["num_tokens"] == 16
    cached = {}
    for b in build_loader("features", "", "val", ClipSpec(mode="val"), batch_size=4, features=str(out)):
        for vid, tok, lab, bnd in zip(b["video_id"], b["tokens"], b["label"], b["bounds"]):
            cached[(vid, round(float(bnd[0]), 3))] = (tok, int(lab))
    enc = EfficientNetLite0()
    spec = ClipSpec(mode="windows", frames=4, seconds=2.0, stride=1.0)
    fly = {}
    for b in VideoLoader(str(demo_shards), "val", spec, 4, 64, mean=enc.mean, std=enc.std, num_workers=0, finite=True):
        tokens, _ = enc(b["video"])
        for vid, tok, lab, bnd in zip(b["video_id"], tokens, b["label"], b["bounds"]):
            fly[(vid, round(float(bnd[0]), 3))] = (tok, int(lab))
    assert set(cached) == set(fly) and len(fly) == 21
    for k, (tok, lab) in fly.items():
        c_tok, c_lab = cached[k]
        assert c_lab == lab
        assert c_tok.shape == tok.shape == (4 * 2 * 2, 1280)
        torch.testing.assert_close(c_tok, tok, rtol=2e-3, atol=2e-3)  # float16 storage


def test_captions_are_cached_with_the_tokens_and_a_stale_cache_is_named(demo_shards, tmp_path):
    """A captioner's cache carries each video's reference caption: the same text the video loader
    gives for that video. The trainer's check names the setting a reused cache differs in."""
    from s5video.trainer.config import load_config
    from s5video.trainer.preflight import feature_cache_stale
    out = tmp_path / "features"
    cfg = ["configs/demo_caption.yaml", f"data.shards={demo_shards}", "data.image_size=64", "data.frames=2"]
    _run("tools/extract_features.py", "--config", cfg[0], "--out", str(out), "--splits", "val", *cfg[1:])
    cached = {}
    for b in build_loader("features", "", "val", ClipSpec(mode="val"), batch_size=4, features=str(out)):
        cached.update(zip(b["video_id"], b["caption"]))
    video = {}
    for b in VideoLoader(str(demo_shards), "val", ClipSpec(mode="val", frames=2, seconds=2.0), 4, 64, num_workers=0,
                         finite=True, task="captioning"):
        video.update(zip(b["video_id"], b["caption"]))
    assert len(video) == 21 and cached == video and len(set(video.values())) > 1
    ok = load_config(REPO / cfg[0], [*cfg[1:], "data.backend=features", f"data.features={out}"])
    other = tmp_path / "other_shards"  # other data: the same layout, one class renamed
    other.mkdir()
    manifest = json.loads((demo_shards / "manifest.json").read_text())
    manifest["classes"][0] = "renamed"
    (other / "manifest.json").write_text(json.dumps(manifest))
    assert feature_cache_stale(ok, "val") is None
    for key, value, says in (("data.image_size", "96", "data.image_size: 96 in the config, 64 in the cache"),
                             ("model.encoder", "vit", "model.encoder: 'vit' in the config, 'efficientnet_lite0' in the cache"),
                             ("data.shards", str(other), "data.shards: the cache was extracted from other shards"),
                             ("model.task", "classification", "model.task: 'classification' in the config, 'captioning' in the cache")):
        extra = ["model.name=s5_debug"] if key == "model.task" else []
        other = load_config(REPO / cfg[0], [*cfg[1:], "data.backend=features", f"data.features={out}",
                                            f"{key}={value}", *extra])
        assert says in (feature_cache_stale(other, "val") or ""), key


def test_two_ranks_read_every_record_once_and_resume(demo_shards, tmp_path):
    from s5video.data.features import FeatureLoader, feature_path
    out = tmp_path / "features"
    _run("tools/extract_features.py", "--config", "configs/demo_finetune.yaml", "--out", str(out), "--splits", "train",
         f"data.shards={demo_shards}", *DATA)
    path = feature_path(str(out), "train")
    n = json.loads(Path(path + ".json").read_text())["records"]
    ev = [[v for b in FeatureLoader(path, 4, rank=r, world=2, finite=True) for v in zip(b["video_id"],
                                                                                         b["bounds"][:, 0].tolist())]
          for r in range(2)]
    assert len(ev[0]) + len(ev[1]) == n and not set(ev[0]) & set(ev[1])  # evaluation: each record once
    a = FeatureLoader(path, 4, seed=3, rank=1, world=2)
    assert len(a) == (n // 2) // 4
    it = iter(a)
    first = [next(it) for _ in range(3)]
    state = a.state_dict()
    rest = [b["video_id"] for b in it]
    b = FeatureLoader(path, 4, seed=3, rank=1, world=2)
    b.load_state_dict(state)
    assert [x["video_id"] for x in b] == rest and first  # the same next batches after a resume
    assert [x["video_id"] for x in a] != [x["video_id"] for x in first]  # the next epoch is reshuffled

    def keys(batches):
        return [v for x in batches for v in x["video_id"]]

    for old, new in ((2, 1), (1, 3)):  # elastic: stopped mid-epoch on `old` ranks, resumed on `new`
        before = [FeatureLoader(path, 4, seed=3, rank=r, world=old) for r in range(old)]
        seen = []
        for x in before:
            it = iter(x)
            seen += keys(next(it) for _ in range(2))
        states = [x.state_dict() for x in before]
        after = [FeatureLoader(path, 4, seed=3, rank=r, world=new) for r in range(new)]
        rest = []
        for x in after:
            x.load_elastic_state(states)
            rest.append(keys(x))
        assert len({len(r) for r in rest}) == 1  # equal shares: every rank the same number of steps
        read = seen + [k for r in rest for k in r]
        assert len(read) == len(set(read)) and n - 4 * new < len(read) <= n, (old, new, len(read))
        hop = [FeatureLoader(path, 4, seed=3, rank=r, world=new) for r in range(new)]  # stopped again, back on `old`
        hop_read = []
        for x in hop:
            x.load_elastic_state(states)
            hop_read += keys([next(iter(x))])
        back = [FeatureLoader(path, 4, seed=3, rank=r, world=old) for r in range(old)]
        for x in back:
            x.load_elastic_state([h.state_dict() for h in hop])
            hop_read += keys(x)
        read = seen + hop_read
        assert len(read) == len(set(read)) and n - 4 * (new + old) < len(read) <= n, (old, new, len(read))
        again = FeatureLoader(path, 4, seed=3, rank=0, world=new)  # stopped again mid-way, resumed on as many
        again.load_elastic_state(states)
        next(iter(again))
        resumed = FeatureLoader(path, 4, seed=3, rank=0, world=new)
        resumed.load_state_dict(again.state_dict())
        assert keys(resumed) == rest[0][4:]


@pytest.fixture(scope="module")
def trained(demo_shards, tmp_path_factory):
    """A tiny S5 finetuned 4 steps from the video (1 rank), and the feature cache of its config.
    (This pair of tests found ffcv handing out label buffers that it refills later.)"""
    root = tmp_path_factory.mktemp("feature_regime")
    cfg = ["--config", "configs/demo_finetune.yaml", f"data.shards={demo_shards}", *TINY, *DATA]
    _run("trainer/main.py", *cfg, f"run.dir={root / 'run'}", "train.max_steps=4", "train.eval_every_steps=100",
         "checkpoint.every_steps=100", "data.num_workers=0")
    r = _run("tools/extract_features.py", *cfg, "--out", str(root / "features"))
    assert [line.split(":")[0] for line in r.stdout.splitlines() if ".beton" in line] == ["train", "val", "test"]
    return root, cfg


@pytest.mark.parametrize("split", ["val", "test"])
def test_feature_path_reports_the_video_paths_metrics(trained, split):
    root, cfg = trained
    results = {}
    for backend in ("cpu", "features"):
        run = root / f"eval_{backend}_{split}"
        shutil.copytree(root / "run", run)
        _run("trainer/main.py", *cfg, f"run.dir={run}", "run.mode=eval", "checkpoint.resume=auto",
             f"data.test_split={split}", f"data.backend={backend}", f"data.features={root / 'features'}")
        results[backend] = json.loads((run / "results.json").read_text())["test"]
    video, feats = results["cpu"], results["features"]
    assert video["videos"] == feats["videos"] == 21
    assert feats["loss"] == pytest.approx(video["loss"], rel=1e-3, abs=1e-3)  # tokens stored as float16
    assert feats["top1"] == video["top1"]


def test_finetune_from_the_cache_alone(trained, tmp_path):
    root, cfg = trained
    shards = tmp_path / "gone"  # a copy of the manifest only: no video can be decoded
    shards.mkdir()
    src = next(a for a in cfg if a.startswith("data.shards=")).split("=", 1)[1]
    shutil.copy(Path(src) / "manifest.json", shards)
    run = tmp_path / "run"
    cfg = [a if not a.startswith("data.shards=") else f"data.shards={shards}" for a in cfg]
    r = _run("trainer/main.py", *cfg, f"run.dir={run}", "data.backend=features", f"data.features={root / 'features'}",
             "train.epochs=2", "train.global_batch_size=8")
    res = json.loads((run / "results.json").read_text())
    meta = json.loads((root / "features" / "train.beton.json").read_text())
    assert res["steps"] == 2 * (meta["records"] // 8)  # epochs over the cached training windows
    assert res["val"]["videos"] == res["test"]["videos"] == 21 and "top1" in res["test"]
    assert "global batch 8 = 4 clips x 1 ranks x 2 accumulation" in r.stdout + r.stderr
