"""Reliability suite on the demo shards: every fault ends finished, resumed identically, or with a
clear error - never a hang, lost samples or a corrupt checkpoint.

Here: corrupt samples + an empty shard; fewer shards than ranks; a crash in the middle of a
checkpoint write; a NaN injected into the loss on one rank. SIGKILL-then-resume (identical losses)
and SIGTERM-then-resume are in tests/test_trainer.py; preemption through Slurm is in
tests/test_launcher.py. Faults are injected by tests/fault_run.py (monkeypatches of that process).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import webdataset as wds

from tests.helpers import finish, launch, repack, train_losses
from s5video.trainer.checkpoint import complete_checkpoints, consolidated_weights, resolve_resume

FAST = ["train.eval_every_steps=1000", "checkpoint.every_steps=1000"]


def train(run: Path, shards: Path, *overrides: str, fault: str | None = None, timeout: float = 300):
    """2 CPU ranks under torchrun (the trainer, or tests/fault_run.py with ``fault``); (returncode, output)."""
    entry = ("tests/fault_run.py", fault) if fault else ("trainer/main.py",)
    p = launch(run, shards, *FAST, *overrides, entry=entry)
    out = finish(p, timeout, ok=False, run_dir=run)
    return p.returncode, out


def train_keys(shards: Path) -> list[str]:
    m = json.loads((shards / "manifest.json").read_text())
    return [s["__key__"] for s in wds.WebDataset([str(shards / s) for s in m["splits"]["train"]["shards"]],
                                                 shardshuffle=False)]


def test_corrupt_samples_and_an_empty_shard(demo_shards, tmp_path):
    n = len(train_keys(demo_shards))
    shards = repack(demo_shards, tmp_path / "shards", {"train": [30, 0, n - 30]}, corrupt={1, 5, 40})
    keys = train_keys(demo_shards)
    code, out = train(tmp_path / "run", shards, "train.max_steps=8")
    assert code == 0, out[-4000:]
    assert "skipping 1 empty shard(s) of split 'train': train-000001.tar" in out
    for j in (1, 5, 40):  # each corrupt sample reported by key, and skipped
        assert f"skipping bad sample {keys[j]}" in out, keys[j]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["steps"] == 8 and results["bad_samples_skipped"] >= 3
    assert f"{results['bad_samples_skipped']} bad training samples were skipped" in out


def test_fewer_shards_than_ranks(demo_shards, tmp_path):
    m = json.loads((demo_shards / "manifest.json").read_text())
    sizes = {s: [m["splits"][s]["num_samples"]] for s in ("train", "val", "test")}  # one shard each, 2 ranks
    shards = repack(demo_shards, tmp_path / "shards", sizes)
    code, out = train(tmp_path / "run", shards, "train.max_steps=6")
    assert code == 0, out[-4000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    # evaluation saw every val/test video exactly once although one rank had no shard of its own
    assert results["val"]["videos"] == sizes["val"][0] and results["test"]["videos"] == sizes["test"][0]
    assert results["steps"] == 6


def test_crash_during_checkpoint_write_keeps_the_previous_one(demo_shards, tmp_path):
    run = tmp_path / "run"
    common = ("train.max_steps=10", "checkpoint.every_steps=4", "train.zero_stage=2")
    code, out = train(run, demo_shards, *common, fault="crash-in-save@8")
    assert code != 0 and "fault: crashing while writing" in out
    assert (run / "checkpoints" / ".tmp-step00000008").is_dir()  # the half-written save
    assert not (run / "checkpoints" / ".tmp-step00000008" / "meta.json").exists()
    assert [p.name for p in complete_checkpoints(run)] == ["step00000004"]
    assert resolve_resume("auto", str(run)).name == "step00000004"
    before = train_losses(run)  # steps 1..8 of the crashed run
    code, out = train(run, demo_shards, *common)
    assert code == 0, out[-4000:]
    assert "at step 4" in out
    after = train_losses(run)
    for step in range(5, 9):  # resumed identically from the previous checkpoint
        assert abs(before[step] - after[step]) <= 1e-5, (step, before[step], after[step])
    assert max(after) == 10
    assert not (run / "checkpoints" / ".tmp-step00000008").exists()  # cleaned by the next save


def test_nan_loss_on_one_rank_skips_the_step_everywhere(demo_shards, tmp_path):
    """Gradient accumulation 2 under ZeRO-2 (gradients reduced at every backward), NaN in the second
    micro-batch of step 3 on rank 1: the step is discarded whole on both ranks. Reference: a run that
    never saw that step's data (its micro-batches dropped before step 3) - same weights, same losses."""
    run, ref = tmp_path / "run", tmp_path / "ref"
    common = ("train.max_steps=6", "train.global_batch_size=16", "train.zero_stage=2", "checkpoint.every_steps=1000")
    code, out = train(run, demo_shards, *common, fault="nan@3:1:1")
    assert code == 0, out[-4000:]
    assert "step 3: non-finite loss, step skipped (1 in a row)" in out
    assert "= 4 clips x 2 ranks x 2 accumulation" in out
    steps = train_losses(run)
    assert sorted(steps) == list(range(1, 7)) and all(math.isfinite(v) for v in steps.values())
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 6 and math.isfinite(results["test"]["loss"])
    code, out = train(ref, demo_shards, *common, fault="drop@3:2")
    assert code == 0, out[-4000:]
    assert "non-finite" not in out
    expected = train_losses(ref)
    for step in range(1, 7):
        assert abs(steps[step] - expected[step]) <= 1e-5, (step, steps[step], expected[step])
    got, want = (consolidated_weights(r / "checkpoints" / "step00000006", "state") for r in (run, ref))
    assert got.keys() == want.keys()
    for k in want:
        assert torch.allclose(got[k], want[k], rtol=1e-5, atol=1e-7), k
