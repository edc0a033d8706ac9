"""Acceptance: every shipped paper config on its dataset's own file format, as a user runs it.

For k600_pretrain, coin, breakfast, charades and the nine LVU tasks: a fixture in the dataset's
exact format (tests/real_formats.py; LVU's real label files verbatim where we have them) ->
``tools/make_shards.py`` -> ``launchers/submit.py --local`` (the Slurm launcher's local executor,
one rank) -> training steps, validation on the carved or official val split, one test pass.
Small-model overrides only (the packaged EfficientNet encoder instead of ViT-L/16, width 32, short
clips); everything else - splits, task, class count, schedule keys, evaluation protocol - is the
config's own. Also: configuration errors stop before anything is queued or trained.
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from s5video.data.clips import split_descriptions

from tests import real_formats
from tests.helpers import TINY, stub_shards
from s5video.tools.datasets import LVU_TASKS

REPO = Path(__file__).resolve().parents[1]
SMALL = [o for o in TINY if not o.startswith("run.init_from")] + [
    "model.encoder=efficientnet_lite0", "model.encoder_weights=null", "data.image_size=64", "data.frames=2",
    "data.clip_seconds=2.0", "data.batch_size=2", "train.epochs=0", "train.max_steps=2", "train.precision=fp32",
    "checkpoint.every_steps=100", "data.long_frames=2", "data.long_seconds=2.0", "data.short_frames=2",
    "data.short_seconds=1.0"]
ONE_RANK = ["--nodes", "1", "--gpus-per-node", "0", "--tasks-per-node", "1", "--cpus-per-task", "1"]
SHARD = ["--fps", "4", "--short-side", "64", "--workers", "2", "--no-progress"]
# The nine LVU configs differ only in task, class count and target; the default run trains one (a
# regression; tests/conftest.py SLOW), `make test-slow` the others.
LVU_DEFAULT = ("relationship", "like", "view")
CASES = [("k600_pretrain", "kinetics", None), ("coin", "coin", None), ("breakfast", "breakfast", None),
         ("charades", "charades", None), ("charades_videomamba", "charades", None),
         ("charades_caption", "charades", None), ("charades_svt", "charades", None)] + [
    pytest.param(f"lvu_{t}", "lvu", t, marks=() if t in LVU_DEFAULT else pytest.mark.slow, id=f"lvu_{t}")
    for t in LVU_TASKS]


def _run(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("stage, dataset, lvu_task", CASES,
                         ids=[c[0] if isinstance(c, tuple) else c.id for c in CASES])
def test_paper_config_from_real_format_to_test_metrics(stage, dataset, lvu_task, clip_pool, tmp_path):
    fx = real_formats.build(dataset, clip_pool, tmp_path / "raw", LVU_TASKS[lvu_task][0] if lvu_task else None)
    shards = tmp_path / "shards"
    extra = ["--task", lvu_task] if lvu_task else []
    r = _run(["tools/make_shards.py", dataset, *fx["args"], *extra, "--out", str(shards), *SHARD])
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((shards / "manifest.json").read_text())
    counts = {s: v["num_samples"] for s, v in m["splits"].items()}
    want = fx["expect"]
    for split, n in want["splits"].items():
        assert counts[split] == n, (counts, want)
    if "train_and_val" in want:  # no val subset in the dataset: carved from train, test untouched
        assert counts["train"] + counts["val"] == want["train_and_val"] and counts["val"] >= 1
        assert m["val_carved"]["videos"] == counts["val"] if dataset != "breakfast" else m["val_carved"]["videos"] >= 1
    rejected = (shards / "rejected.jsonl").read_text().splitlines()
    assert len(rejected) == want["rejected"]
    assert "samples per split: " in r.stdout

    run = tmp_path / "run"
    # the paper configs train S4 (NPLR) in the authors' block; one trains the S4D flag, one ViS4mer with
    # the paper's block (eq. 4) and its max_st pooling
    variant = {"charades": ["model.kernel=s4d"], "lvu_relationship": ["model.name=vis4mer", "model.block=paper"],
               # seed 004: the debug VideoMamba video encoder; 2-s windows of the 3-s clips at 2 s, 1 s, 0.5 s
               "charades_videomamba": ["model.encoder=videomamba_debug", "model.mlp_layers=[16]",
                                       "data.eval_stride_seconds=2.0", "data.eval_strides_seconds=[0,1.0,0.5]"],
               "charades_caption": ["model.encoder=videomamba_debug", "model.depth=1", "model.caption_max_tokens=16"],
               # seed 004's SVT row: the debug TimeSformer (its 8-frame time embedding read at 2 frames)
               "charades_svt": ["model.encoder=svt_debug", "model.mlp_layers=[16]"],
               }.get(stage, [])
    if stage == "k600_pretrain":
        cmd = ["launchers/submit.py", "--local", *ONE_RANK, "pretrain"]
    else:
        cmd = ["launchers/submit.py", "--local", *ONE_RANK, "finetune", stage]
    r = _run(cmd + [f"data.shards={shards}", f"run.dir={run}", *SMALL, *variant])
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    results = json.loads((run / "results.json").read_text())
    data = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert data["sampling"] == ("segments" if stage in ("coin", "breakfast") else "window")  # the authors' protocol
    resolved = yaml.safe_load((run / "config.yaml").read_text())["model"]
    assert resolved["kernel"] == ("s4d" if stage == "charades" else "s4")
    assert resolved["frame_tokens"] == {"charades_videomamba": "cls", "charades_caption": "cls+patch",
                                        "charades_svt": "cls"}.get(stage, "patch")
    assert results["steps"] == 2
    if stage == "k600_pretrain":  # LSMCL on train+test: the unlabelled Kinetics test CSV is pretraining data
        assert results["mode"] == "pretrain" and results["train"]["final_loss"] > 0
        assert "2 steps (0.5 epochs of 4)" in r.stdout  # 9 clips of train+test at 2 per step (train alone: 3)
        return
    metric = {"classification": "top1", "regression": "mse", "multilabel": "mAP", "captioning": "loss"}[resolved["task"]]
    assert results["selected"]["metric"] == metric
    assert results["val"]["videos"] == counts["val"] and results["test"]["videos"] == counts["test"]
    if m["task"] != "regression":
        assert len(results["classes"]) == len(m["classes"])
    if stage == "charades_caption":  # seed 004's captioner: BLEU/ROUGE against the CSV's descriptions
        assert {"bleu1", "bleu2", "bleu3", "bleu4", "rouge1_f", "rouge2_f"} <= set(results["test"])
        with open(tmp_path / "raw" / "Charades_v1_test.csv", newline="") as f:
            descriptions = {row["id"]: row["descriptions"] for row in csv.DictReader(f)}
        rows = [json.loads(l) for l in (run / "predictions_test.jsonl").read_text().splitlines()]
        assert sorted(r["video_id"] for r in rows) == sorted(descriptions)
        assert all(r["references"] == split_descriptions(descriptions[r["video_id"]]) and len(r["references"]) == 2
                   and isinstance(r["caption"], str) for r in rows)  # every annotator's description
    if stage == "charades_videomamba":  # seed 004's side-by-side strides = separate evaluations at each stride
        by_stride = results["test_by_stride"]
        assert list(by_stride) == ["2s", "1s", "0.5s"] and by_stride["2s"] == results["test"]
        assert "test mAP by window stride (windows of 2 s): 2s (no overlap)" in r.stdout
        ckpt = sorted((run / "checkpoints").glob("step*"))[-1]
        r = _run(["trainer/main.py", "--config", "configs/charades_videomamba.yaml", f"data.shards={shards}",
                  f"run.dir={tmp_path / 'eval'}", *SMALL, *variant, "run.mode=eval", f"checkpoint.resume={ckpt}",
                  "data.eval_stride_seconds=0.5", "data.eval_strides_seconds=[]"])
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        alone = json.loads((tmp_path / "eval" / "results.json").read_text())["test"]
        assert alone["mAP"] == pytest.approx(by_stride["0.5s"]["mAP"], abs=1e-6)
        assert alone["mAP"] != pytest.approx(by_stride["2s"]["mAP"], abs=1e-6)  # the windows differ


def test_missing_split_is_caught_before_training_or_queueing(demo_shards, tmp_path):
    no_val = stub_shards(tmp_path / "no_val", {"train": 40, "test": 10}, ["a", "b"])
    r = _run(["trainer/main.py", "--config", "configs/demo_finetune.yaml", f"data.shards={no_val}",
              f"run.dir={tmp_path / 'run'}"], timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(
        "trainer/main.py: error: data.val_split: split 'val' is not in")
    assert "--val-fraction" in r.stderr and not (tmp_path / "run").exists()  # nothing started
    r = _run(["launchers/submit.py", "--local", "pretrain", "--config", "configs/demo_pretrain.yaml",
              f"data.shards={no_val}", f"run.dir={tmp_path / 'pre'}"], timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and not (tmp_path / "pre").exists()
    assert "pretrain (configs/demo_pretrain.yaml): data.train_split: split 'pretrain' is not in" in r.stderr
    r = _run(["launchers/submit.py", "--dry-run", "pretrain", "--config", "configs/demo_pretrain.yaml",
              f"data.shards={no_val}"], timeout=120)
    assert r.returncode == 2 and "data.train_split" in r.stderr


@pytest.mark.parametrize("override, message", [
    ("run.init_from=/nonexistent/pretrain", "run.init_from: /nonexistent/pretrain holds no complete checkpoint"),
    ("model.encoder_weights=/nonexistent/vit", "model.encoder_weights: /nonexistent/vit does not exist"),
    ("model.task=regression", "model.task: 'regression', but the shards in"),
    ("train.global_batch_size=12", "train.global_batch_size: 12 is not a multiple of data.batch_size x world size"),
    ("model.pool=max_st", "model.pool: 'max_st' is not allowed for S5"),
    ("model.frame_tokens=cls", "model.frame_tokens: efficientnet_lite0 has no CLS token"),
    ("model.name=s6", "model.name: 's6' not allowed; allowed values:"),
    ("model.task=captioning", "model.task: 'captioning' with model.name='s5': captioning needs a captioner"),
])
def test_bad_setting_is_one_clear_line_before_anything_runs(demo_shards, tmp_path, override, message):
    r = _run(["launchers/submit.py", "--dry-run", "finetune", "demo", f"data.shards={demo_shards}", override],
             timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and message in r.stderr
