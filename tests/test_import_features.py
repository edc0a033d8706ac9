"""tools/import_features.py on feature dumps written the ViS4mer authors' way (one (T, P, 1024)
.npy per video, their Breakfast CSVs and COIN.json), then a finetune on the imported cache."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.helpers import REPO
from tests.test_segments import _records

D, P, FRAMES = 1024, 4, 8
ACTIONS = ["cereals", "coffee", "friedegg"]


def _dump(root: Path, vid: str, T: int, label: int, rng: np.random.Generator) -> np.ndarray:
    """One video's features as their extractor saves them: np.save of a (T, P, 1024) float32 array
    (one row per second); the class is readable in channel `label`, so training can learn it."""
    a = rng.standard_normal((T, P, D)).astype(np.float32)
    a[:, :, label] += 2.0
    np.save(root / f"{vid}.npy", a)
    return a


def _breakfast(tmp: Path):
    """Their data/Breakfast/{train,test}.csv (header file_name,duration,action,class_id) and dumps:
    persons P03-P05 train, P47 test; lengths from 3 s (stretched to 8) to 95 s (sampled)."""
    feats, csvs = tmp / "video_swin_features", tmp / "Breakfast"
    feats.mkdir()
    csvs.mkdir()
    rng = np.random.default_rng(0)
    arrays, lengths = {}, iter([3, 8, 95, 40, 17, 61, 9, 12, 30, 5, 77, 21])
    for split, persons in (("train", ["P03", "P04", "P05"]), ("test", ["P47"])):
        lines = ["file_name,duration,action,class_id"]
        for p in persons:
            for c, act in enumerate(ACTIONS):
                vid = f"{p}-cam01-{p}_{act}"
                T = next(lengths)
                arrays[vid] = _dump(feats, vid, T, c, rng)
                lines.append(f"{vid},{T},{act},{c}")
        (csvs / f"{split}.csv").write_text("\n".join(lines) + "\n")
    # what the authors' scripts skip by name: a dump cut short, and one never written
    (feats / "P05-cam01-P05_coffee.npy").write_bytes((feats / "P05-cam01-P05_coffee.npy").read_bytes()[:200])
    (feats / "P04-cam01-P04_friedegg.npy").unlink()
    return feats, csvs, arrays


def _import(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "tools/import_features.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_breakfast_dumps_import_at_their_indices_and_train(tmp_path):
    feats, csvs, arrays = _breakfast(tmp_path)
    cache = tmp_path / "cache"
    r = _import("--features", str(feats), "--breakfast-csv-dir", str(csvs), "--out", str(cache),
                "--frames", str(FRAMES), "--val-fraction", "0.34")
    assert r.returncode == 0, r.stderr
    m = json.loads((cache / "manifest.json").read_text())
    assert m["classes"] == ACTIONS and m["task"] == "classification"
    rejected = {json.loads(x)["key"]: json.loads(x)["reason"] for x in (cache / "rejected.jsonl").read_text().splitlines()}
    assert set(rejected) == {"P05-cam01-P05_coffee", "P04-cam01-P04_friedegg"}
    assert "No such file" in rejected["P04-cam01-P04_friedegg"] and "2 rejected" in r.stdout
    # val carved by person: a person's videos are all in train or all in val
    val_ids = json.loads((cache / "val.beton.videos.json").read_text())
    train_ids = json.loads((cache / "train.beton.videos.json").read_text())
    assert val_ids and not {v.split("-")[0] for v in val_ids} & {v.split("-")[0] for v in train_ids}
    # test: one record per video, the authors' uniform indices written out:
    # np.arange(0, n, n / l_secs, dtype=np.float32).astype(np.int32), then reshape (l_secs * P, 1024)
    tokens, video, bounds = _records(cache / "test.beton")
    names = json.loads((cache / "test.beton.videos.json").read_text())
    assert sorted(names) == sorted(v for v in arrays if v.startswith("P47"))
    for i, name in enumerate(names):
        a = arrays[name]
        idx = np.arange(0, a.shape[0], a.shape[0] / float(FRAMES), dtype=np.float32).astype(np.int32)
        want = a[idx].reshape(FRAMES * P, D).astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(tokens[video == i][0], want)
        assert bounds[video == i][0].tolist() == [0.0, float(a.shape[0])]
    # train: every second of every training video, one record each
    t_tokens, t_video, _ = _records(cache / "train.beton")
    assert len(t_video) == sum(arrays[v].shape[0] for v in train_ids)
    first = train_ids[0]
    np.testing.assert_array_equal(t_tokens[t_video == 0], arrays[first].astype(np.float16).astype(np.float32))
    # the imported cache trains as it is: data.shards and data.features are the cache
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "trainer/main.py", "--config", "configs/breakfast.yaml",
                        f"data.shards={cache}", "data.backend=features", f"data.features={cache}",
                        f"data.frames={FRAMES}", "model.num_classes=0", "model.name=s5_debug", "model.width=32",
                        "model.depth=2", "model.state_size=8", f"run.dir={run}", "train.epochs=0",
                        "train.max_steps=3", "train.eval_every_steps=100", "train.precision=fp32",
                        "train.zero_stage=0", "data.batch_size=2", "data.num_workers=0",
                        "logging.progress_bar=false"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    res = json.loads((run / "results.json").read_text())
    assert res["test"]["videos"] == len(names) and res["classes"] == ACTIONS


def test_coin_json_and_bad_inputs(tmp_path):
    feats = tmp_path / "features"
    feats.mkdir()
    rng = np.random.default_rng(1)
    db = {}
    for i, (vid, subset, cls) in enumerate([("a1", "training", 0), ("a2", "training", 0), ("b1", "training", 1),
                                            ("b2", "training", 1), ("c1", "testing", 1), ("c2", "testing", 0)]):
        _dump(feats, vid, 5 + 7 * i, cls, rng)
        db[vid] = {"recipe_type": cls, "class": ["MakeCoffee", "ChangeTire"][cls], "subset": subset,
                   "duration": 5.0 + 7 * i, "annotation": []}
    np.save(feats / "b2.npy", np.zeros((4, 3), dtype=np.int64))  # not floating point
    (tmp_path / "COIN.json").write_text(json.dumps({"database": db}))
    out = tmp_path / "cache"
    r = _import("--features", str(feats), "--coin-json", str(tmp_path / "COIN.json"), "--out", str(out),
                "--frames", "4", "--val-fraction", "0")
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["classes"] == ["MakeCoffee", "ChangeTire"] and m["splits"]["test"]["num_samples"] == 2
    assert m["splits"]["train"]["num_samples"] == 3 and "val" not in m["splits"]
    assert "dtype int64" in (out / "rejected.jsonl").read_text()
    # a CSV that is not theirs names the file and what was expected
    (tmp_path / "bf").mkdir()
    (tmp_path / "bf" / "train.csv").write_text("video,label\nx,1\n")
    (tmp_path / "bf" / "test.csv").write_text("video,label\n")
    r = _import("--features", str(feats), "--breakfast-csv-dir", str(tmp_path / "bf"), "--out", str(out))
    assert r.returncode == 2 and "train.csv: header ['video', 'label'], expected file_name,duration,action,class_id" \
        in r.stderr, r.stderr
