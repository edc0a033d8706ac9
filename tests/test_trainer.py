"""The trainer on the demo shards: 2 CPU ranks under ZeRO 1/2/3 with a decreasing loss; SIGKILL
then resume gives the same losses as an uninterrupted run; SIGTERM saves and exits 0."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["run.init_from=null", "model.width=32", "model.depth=2", "model.state_size=8", "data.image_size=64",
        "data.frames=4", "data.batch_size=4", "data.num_workers=1", "logging.every_steps=1",
        "logging.progress_bar=false", "train.warmup_steps=2", "train.lr=3e-3", "train.ssm_lr=3e-3"]


def torchrun(run_dir: Path, shards: Path, *overrides: str, nproc: int = 2) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
           str(29500 + os.getpid() % 1000), "trainer/main.py", "--config", "configs/demo_finetune.yaml",
           f"run.dir={run_dir}", f"data.shards={shards}", *TINY, *overrides]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(p: subprocess.Popen, timeout: float = 300) -> str:
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        pytest.fail("training run timed out")
    assert p.returncode == 0, out[-4000:]
    return out


def train_losses(run_dir: Path) -> dict[int, float]:
    """step -> loss of the last logged occurrence (a resumed run re-logs steps after its checkpoint)."""
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_two_rank_zero_stages_loss_decreases(demo_shards, tmp_path, stage):
    run = tmp_path / "run"
    backend = "dali" if stage == 1 else "cpu"  # auto = cpu on a CPU machine; keep the DALI path trained too
    finish(torchrun(run, demo_shards, f"train.zero_stage={stage}", "train.max_steps=24", "train.eval_every_steps=100",
                    "checkpoint.every_steps=100", f"data.backend={backend}"))
    losses = train_losses(run)
    first, last = sum(losses[s] for s in range(1, 5)) / 4, sum(losses[s] for s in range(21, 25)) / 4
    assert last < first, losses
    info = json.loads((run / "run_info.json").read_text())
    assert info["world_size"] == 2 and [r["rank"] for r in info["ranks"]] == [0, 1]
    results = json.loads((run / "results.json").read_text())
    assert "top1" in results["test"] and results["selected"]["metric"] == "top1"
    assert (run / "curves.png").exists() and (run / "config.yaml").exists()


def test_sigkill_then_resume_matches_uninterrupted(demo_shards, tmp_path):
    common = ("train.max_steps=12", "checkpoint.every_steps=4", "train.eval_every_steps=100", "train.zero_stage=2")
    ref = tmp_path / "ref"
    finish(torchrun(ref, demo_shards, *common))
    run = tmp_path / "killed"
    p = torchrun(run, demo_shards, *common)
    deadline = time.time() + 240
    while time.time() < deadline and not (run / "checkpoints" / "step00000008" / "meta.json").exists():
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)
    p.communicate()
    ckpts = sorted(x.name for x in (run / "checkpoints").glob("step*"))
    assert ckpts and ckpts[-1] >= "step00000004", ckpts
    resumed_from = int(ckpts[-1][4:])
    out = finish(torchrun(run, demo_shards, *common, "checkpoint.resume=auto"))
    assert f"at step {resumed_from}" in out
    a, b = train_losses(ref), train_losses(run)
    for step in range(resumed_from + 1, 13):
        assert abs(a[step] - b[step]) <= 1e-5, (step, a[step], b[step])


def test_sigterm_saves_and_exits_cleanly_then_resumes(demo_shards, tmp_path):
    run = tmp_path / "run"
    common = ("train.max_steps=400", "checkpoint.every_steps=1000", "train.eval_every_steps=1000")
    p = torchrun(run, demo_shards, *common)
    deadline = time.time() + 240
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and
                                          len((run / "metrics.jsonl").read_text().splitlines()) >= 3):
        time.sleep(0.2)
    t0 = time.time()
    subprocess.run(["pkill", "-TERM", "-P", str(p.pid)], check=False)  # every rank, as srun does (not the agent)
    out = finish(p, timeout=60)
    assert time.time() - t0 < 30
    assert "stop signal (SIGTERM): checkpoint saved" in out
    (ckpt,) = list((run / "checkpoints").glob("step*"))
    step = int(ckpt.name[4:])
    out = finish(torchrun(run, demo_shards, "train.max_steps=" + str(step + 3), "checkpoint.every_steps=1000",
                          "train.eval_every_steps=1000"))
    assert f"at step {step}" in out
    assert max(train_losses(run)) == step + 3


def test_pretrain_then_finetune_init_from(demo_shards, tmp_path):
    pre = tmp_path / "pretrain"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29600 + os.getpid() % 1000), "trainer/main.py", "--config", "configs/demo_pretrain.yaml",
           f"run.dir={pre}", f"data.shards={demo_shards}", "model.width=32", "model.depth=2", "model.state_size=8",
           "data.image_size=64", "data.long_frames=4", "data.short_frames=2", "data.batch_size=4",
           "train.max_steps=4", "checkpoint.every_steps=100", "logging.progress_bar=false", "logging.every_steps=1"]
    finish(subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True))
    assert len(train_losses(pre)) == 4
    out = finish(torchrun(tmp_path / "ft", demo_shards, f"run.init_from={pre}", "train.max_steps=2",
                          "train.eval_every_steps=100", "checkpoint.every_steps=100"))
    line = next(l for l in out.splitlines() if l.startswith("init_from"))
    assert "missing keys ['backbone.backbone.head.weight', 'backbone.backbone.head.bias']" in line
    assert "unexpected keys []" in line


def test_nonfinite_losses_stop_with_clear_error(demo_shards, tmp_path):
    p = torchrun(tmp_path / "nan", demo_shards, "train.lr=1e30", "train.ssm_lr=1e30", "train.warmup_steps=0",
                 "train.max_steps=50", "train.max_nonfinite_steps=3", "checkpoint.every_steps=1000",
                 "train.eval_every_steps=1000", "train.grad_clip=0.0")
    out, _ = p.communicate(timeout=300)
    assert p.returncode != 0
    assert "non-finite loss, step skipped (1 in a row)" in out
    assert "3 non-finite losses in a row (train.max_nonfinite_steps=3); stopping" in out


def test_resume_with_other_world_size_is_refused_and_eval_mode(demo_shards, tmp_path):
    run = tmp_path / "run"
    finish(torchrun(run, demo_shards, "train.max_steps=2", "checkpoint.every_steps=1000", "train.eval_every_steps=1000"))
    trained = json.loads((run / "results.json").read_text())["test"]
    out = finish(torchrun(run, demo_shards, "run.mode=eval", "checkpoint.resume=auto"))
    assert "resumed from" in out and "at step 2" in out
    evaluated = json.loads((run / "results.json").read_text())
    assert evaluated["mode"] == "eval" and evaluated["test"]["videos"] == 21
    assert abs(evaluated["test"]["top1"] - trained["top1"]) < 1e-6  # best = last here: same weights
    p = torchrun(run, demo_shards, "train.max_steps=4", nproc=1)
    out, _ = p.communicate(timeout=300)
    assert p.returncode != 0 and "was saved by 2 ranks and this run has 1" in out


CONFIGS = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml") if p.name != "base.yaml")


@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_runs_on_demo_shards(demo_shards, tmp_path, config):
    """Each shipped config, pointed at the demo shards with a small train.max_steps, trains and
    evaluates in one process (the ViT-L/16 configs with the packaged EfficientNet encoder: the
    ViT checkpoint is not on this machine; the class count from the demo manifest)."""
    overrides = [f"run.dir={tmp_path / 'run'}", f"data.shards={demo_shards}", "train.max_steps=2",
                 "model.encoder=efficientnet_lite0", "model.width=32", "model.depth=2", "model.state_size=8",
                 "data.image_size=64", "data.frames=2", "data.long_frames=2", "data.short_frames=2",
                 "data.batch_size=2", "data.num_workers=1", "logging.progress_bar=false", "run.init_from=null",
                 "data.val_split=val", "data.test_split=test", "model.num_classes=0"]
    if "k600" in config or "pretrain" in config:
        overrides.append("data.train_split=train")
    r = subprocess.run([sys.executable, "trainer/main.py", "--config", config, *overrides], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["steps"] == 2


def test_class_count_mismatch_is_a_config_error(demo_shards, tmp_path):
    r = subprocess.run([sys.executable, "trainer/main.py", "--config", "configs/demo_finetune.yaml",
                        f"run.dir={tmp_path}", f"data.shards={demo_shards}", "model.num_classes=4", "train.max_steps=1",
                        "data.num_workers=0"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "model.num_classes: 4, but the shards" in r.stderr and "have 6 classes" in r.stderr


def test_deepspeed_launcher_starts_two_cpu_ranks(demo_shards, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port",
           str(29700 + os.getpid() % 1000), "trainer/main.py", "--config", "configs/demo_finetune.yaml",
           f"run.dir={run}", f"data.shards={demo_shards}", *TINY, "train.max_steps=2", "train.eval_every_steps=100",
           "checkpoint.every_steps=100"]
    finish(subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True))
    info = json.loads((run / "run_info.json").read_text())
    assert info["world_size"] == 2 and len(info["ranks"]) == 2
