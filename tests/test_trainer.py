"""The trainer on the demo shards, 2 CPU ranks: ZeRO 1/2/3 with a decreasing loss; every run ends
(exits within 30 s of its results, no process left behind, no shared-memory file left in /dev/shm);
10 SIGKILL -> resume cycles give the losses of an uninterrupted run; a killed launcher takes its
ranks and decode workers with it; SIGTERM saves and exits 0; a checkpoint resumes on another
number of ranks (ZeRO 1-3) with its weights, optimizer state and data position."""
from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import (EXIT_WITHIN_S, REPO, TINY, finish, free_port, kill_tree, launch, process_tree, repack,
                           train_loss_rows, train_losses, wait_gone)
from s5video.trainer.checkpoint import complete_checkpoints, consolidated_weights, prepare_elastic
from s5video.trainer.config import ConfigError

LR = ["train.lr=3e-3", "train.ssm_lr=3e-3"]  # on top of tests.helpers.TINY, which launch() adds


def torchrun(run_dir: Path, shards: Path, *overrides: str, nproc: int = 2, **kw) -> subprocess.Popen:
    return launch(run_dir, shards, *LR, *overrides, nproc=nproc, **kw)


def latest_step(run: Path) -> int:
    done = complete_checkpoints(run)
    return int(done[-1].name[4:]) if done else 0


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_two_rank_zero_stages_loss_decreases(demo_shards, tmp_path, stage):
    run = tmp_path / "run"
    backend = "dali" if stage == 1 else "cpu"  # auto = cpu on a CPU machine; keep the DALI path trained too
    finish(torchrun(run, demo_shards, f"train.zero_stage={stage}", "train.max_steps=24", "train.eval_every_steps=100",
                    "checkpoint.every_steps=100", f"data.backend={backend}"), run_dir=run)
    losses = train_losses(run)
    first, last = sum(losses[s] for s in range(1, 5)) / 4, sum(losses[s] for s in range(21, 25)) / 4
    assert last < first, losses
    info = json.loads((run / "run_info.json").read_text())
    assert info["world_size"] == 2 and [r["rank"] for r in info["ranks"]] == [0, 1]
    results = json.loads((run / "results.json").read_text())
    assert "top1" in results["test"] and results["selected"]["metric"] == "top1"
    assert (run / "curves.png").exists() and (run / "config.yaml").exists()


def test_ten_sigkill_resume_cycles_match_uninterrupted(demo_shards, tmp_path):
    """Ten times in a row every process of the run (launcher, ranks, decode workers) is SIGKILLed at a
    random moment after a new checkpoint (inside a step, a save or an evaluation), and the next attempt
    resumes. Every loss and validation result any attempt logged equals the uninterrupted run's."""
    common = ("train.max_steps=60", "checkpoint.every_steps=2", "train.eval_every_steps=5", "train.zero_stage=2",
              "checkpoint.resume=auto")
    ref = tmp_path / "ref"
    finish(torchrun(ref, demo_shards, *common), run_dir=ref)
    run, rng, resumed = tmp_path / "killed", random.Random(12), []
    metrics = run / "metrics.jsonl"
    for cycle in range(10):
        start, seen = latest_step(run), len(metrics.read_text().splitlines()) if metrics.exists() else 0
        target = start + rng.randint(2, 4)  # this attempt logs steps start+1, ...: kill after `target`
        p = torchrun(run, demo_shards, *common)
        deadline = time.time() + 240
        while time.time() < deadline and p.poll() is None and not any(
                r["split"] == "train" and r["step"] >= target
                for r in map(json.loads, (metrics.read_text().splitlines() if metrics.exists() else [])[seen:])):
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.4))
        tree = process_tree(p.pid)
        assert p.poll() is None, f"cycle {cycle}: the run ended before it was killed"
        kill_tree(tree)
        p.communicate()
        assert not wait_gone(tree, 10), f"cycle {cycle}: processes survived SIGKILL"
        resumed.append(latest_step(run))
    out = finish(torchrun(run, demo_shards, *common), run_dir=run)
    assert f"at step {resumed[-1]}" in out and len(set(resumed)) >= 5, resumed
    ref_loss = train_losses(ref)
    rows = train_loss_rows(run)
    assert {s for s, _ in rows} == set(range(1, 61))
    for step, loss in rows:  # killed attempts' rows and resumed ones alike
        assert abs(loss - ref_loss[step]) <= 1e-5, (step, loss, ref_loss[step])
    val = lambda d: {r["step"]: r["top1"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
                     if r["split"] == "val"}
    assert val(run) == val(ref)
    a, b = (json.loads((d / "results.json").read_text()) for d in (ref, run))
    assert a["test"] == b["test"] and a["selected"]["step"] == b["selected"]["step"]
    assert sorted(x.name for x in (run / "best").iterdir() if x.is_dir()) == [a["selected"]["tag"]]


@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_killed_launcher_leaves_no_process(demo_shards, tmp_path, launcher):
    """SIGKILL of the launcher alone (torchrun; the deepspeed runner): its ranks - in their own sessions,
    or below deepspeed.launcher.launch - and their decode workers notice, save, and are all gone
    within 60 s; the run resumes from that checkpoint."""
    run = tmp_path / "run"
    p = torchrun(run, demo_shards, "train.max_steps=400", "checkpoint.every_steps=1000", "train.eval_every_steps=1000",
                 launcher=launcher)
    deadline = time.time() + 240
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and
                                          len((run / "metrics.jsonl").read_text().splitlines()) >= 3):
        time.sleep(0.2)
    tree = process_tree(p.pid)
    assert len(tree) >= 5, tree  # launcher, 2 ranks, their decode workers
    p.kill()  # not reaped yet: a killed launcher stays a zombie until its parent waits for it
    alive = wait_gone(tree[1:], 60)
    p.communicate()
    assert not alive, f"processes of the run alive 60 s after its launcher was killed: {alive}"
    step = latest_step(run)
    assert step >= 3, "no checkpoint saved after the launcher died"
    out = finish(torchrun(run, demo_shards, f"train.max_steps={step + 2}", "checkpoint.every_steps=1000",
                          "train.eval_every_steps=1000"), run_dir=run)
    assert f"at step {step}" in out


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
    assert "stopped (SIGTERM): checkpoint saved" in out
    (ckpt,) = list((run / "checkpoints").glob("step*"))
    assert time.time() - (ckpt / "meta.json").stat().st_mtime < EXIT_WITHIN_S
    step = int(ckpt.name[4:])
    out = finish(torchrun(run, demo_shards, "train.max_steps=" + str(step + 3), "checkpoint.every_steps=1000",
                          "train.eval_every_steps=1000"), run_dir=run)
    assert f"at step {step}" in out
    assert max(train_losses(run)) == step + 3


def test_pretrain_then_finetune_init_from(demo_shards, tmp_path):
    pre = tmp_path / "pretrain"
    finish(launch(pre, demo_shards, "data.long_frames=4", "data.short_frames=2", "train.max_steps=4",
                  "checkpoint.every_steps=100", config="configs/demo_pretrain.yaml"), run_dir=pre)
    assert len(train_losses(pre)) == 4
    ft = tmp_path / "ft"
    out = finish(torchrun(ft, demo_shards, f"run.init_from={pre}", "train.max_steps=2", "train.eval_every_steps=100",
                          "checkpoint.every_steps=100"), run_dir=ft)
    line = next(l for l in out.splitlines() if l.startswith("init_from"))
    assert "missing keys ['temporal.vis4mer.head.weight', 'temporal.vis4mer.head.bias']" in line
    assert "unexpected keys []" in line


def test_nonfinite_losses_stop_with_clear_error(demo_shards, tmp_path):
    p = torchrun(tmp_path / "nan", demo_shards, "train.lr=1e30", "train.ssm_lr=1e30", "train.warmup_steps=0",
                 "train.max_steps=50", "train.max_nonfinite_steps=3", "checkpoint.every_steps=1000",
                 "train.eval_every_steps=1000", "train.grad_clip=0.0")
    out = finish(p, ok=False)
    assert p.returncode != 0
    assert "non-finite loss, step skipped (1 in a row)" in out
    assert "3 non-finite losses in a row (train.max_nonfinite_steps=3); stopping" in out


def test_eval_and_finetune_resumed_on_another_world_size_give_the_trained_metrics(demo_shards, tmp_path):
    """A 2-rank ZeRO-3 finetune (validated each step; the best model is not the last) on 1 rank: its last
    checkpoint evaluated on the val split (run.mode=eval) gives the val metrics the 2 ranks logged at
    that step; resumed with nothing left to train, the run loads its best weights, saved partitioned
    by 2 ranks, and tests them: the trained run's test metrics."""
    run, common = tmp_path / "run", ["train.zero_stage=3", "train.max_steps=3", "checkpoint.every_steps=1000",
                                     "train.eval_every_steps=1",
                                     "model.block=paper"]  # its 3 steps peak on val at step 2 (authors': at 3)
    finish(torchrun(run, demo_shards, *common), run_dir=run)
    trained = json.loads((run / "results.json").read_text())
    assert trained["selected"]["step"] != 3  # the test is about loading a best model that is not the last one
    val3 = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r["split"] == "val" and r["step"] == 3][-1]
    out = finish(torchrun(run, demo_shards, *common, "run.mode=eval", "data.test_split=val", nproc=1), run_dir=run)
    assert "at step 3 (elastic: saved by 2 ranks, now 1" in out
    evaluated = json.loads((run / "results.json").read_text())
    assert evaluated["mode"] == "eval" and evaluated["test"]["videos"] == 21
    assert evaluated["test"]["top1"] == val3["top1"] and abs(evaluated["test"]["loss"] - val3["loss"]) < 1e-5
    out = finish(torchrun(run, demo_shards, *common, nproc=1), run_dir=run)
    assert "at step 3 (elastic: saved by 2 ranks, now 1" in out
    resumed = json.loads((run / "results.json").read_text())
    assert resumed["selected"] == trained["selected"] and resumed["test"]["videos"] == 21
    assert resumed["test"]["top1"] == trained["test"]["top1"]
    assert abs(resumed["test"]["loss"] - trained["test"]["loss"]) < 1e-5


def checkpoint_tensors(ckpt: Path, stage: int) -> dict[str, torch.Tensor]:
    """Everything a resumed run needs from ``ckpt``: the full weights (DeepSpeed's zero_to_fp32, buffers
    included) and each parameter's fp32 master copy, AdamW moments and step (its universal format)."""
    out = {f"weights/{k}": v for k, v in consolidated_weights(ckpt, "state").items()}
    prepare_elastic(ckpt, 0, stage)  # no process group here: this process converts
    for f in (ckpt / "universal" / "zero").glob("*/*.pt"):
        t = torch.load(f, weights_only=False)
        out[f"{f.parent.name}/{f.stem}"] = t["param"] if isinstance(t, dict) else t
    return out


def assert_same_state(a: Path, b: Path, stage: int) -> None:
    ta, tb = checkpoint_tensors(a, stage), checkpoint_tensors(b, stage)
    assert set(ta) == set(tb) and any(k.endswith("/exp_avg_sq") for k in ta), sorted(set(ta) ^ set(tb))[:5]
    differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not differ, differ[:5]


def test_elastic_resume_keeps_weights_and_optimizer_state_zero_1_2_3(tmp_path):
    """ZeRO 1, 2, 3: the trainer's engine trained 2 steps on 2 ranks and saved, loaded on 1 rank and
    saved again, then loaded on 2 ranks and saved again: weights, fp32 master weights, AdamW moments
    and steps identical in the three checkpoints (2 -> 1 and 1 -> 2)."""
    for nproc, mode in ((2, "train"), (1, "resume"), (2, "resume")):
        p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                            "--master_port", str(free_port()), "tests/elastic_engine.py", str(tmp_path), mode],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    for stage in (1, 2, 3):
        two, one, two_again = complete_checkpoints(tmp_path / f"zero{stage}")
        assert [json.loads((c / "meta.json").read_text())["world"] for c in (two, one, two_again)] == [2, 1, 2]
        assert_same_state(two, one, stage)
        assert_same_state(one, two_again, stage)


def test_elastic_pretrain_2_to_1_ranks_reads_each_sample_of_the_pass_once(demo_shards, tmp_path):
    """LSMCL pretraining under ZeRO-3 on 4 shards: 3 steps on 2 ranks, resumed on 1 rank for 8 more: the
    samples of the interrupted pass, as logged by every rank of both attempts (logging.sample_keys),
    are the split's 55 keys, each exactly once. The launcher's plan for a resubmission on one node
    announces the elastic resume, and refuses DALI before anything queues. (More ranks and workers,
    and a second resume before the first pass ends: tests/test_loader.py.)"""
    shards = repack(demo_shards, tmp_path / "s", {"pretrain": [14, 14, 14, 13]}, only=True)
    run = tmp_path / "run"
    common = ["train.zero_stage=3", "checkpoint.every_steps=1000", "logging.sample_keys=true"]
    finish(launch(run, shards, *common, "train.max_steps=3", config="configs/demo_pretrain.yaml"), run_dir=run)
    from s5video.launchers import submit
    args = ["--local", "--nodes", "1", "--tasks-per-node", "1", "pretrain", "--config", "configs/demo_pretrain.yaml",
            f"data.shards={shards}", f"run.dir={run}", *TINY]  # the same model: run.dir holds its checkpoints
    assert "(saved by 2 ranks) on 1 ranks" in submit.plan(submit.build_parser().parse_args(args))[0].elastic
    with pytest.raises(ConfigError, match="'dali' cannot resume"):
        submit.plan(submit.build_parser().parse_args(args + ["data.backend=dali"]))
    out = finish(launch(run, shards, *common, "train.max_steps=11", config="configs/demo_pretrain.yaml", nproc=1),
                 run_dir=run)
    assert "at step 3 (elastic: saved by 2 ranks, now 1" in out
    rows = [json.loads(line) for r in (0, 1) for line in (run / f"samples-rank{r}.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in rows}) == list(range(1, 12))
    first_pass = [k for r in rows for k, p in zip(r["keys"], r["passes"]) if p == 0]
    assert len(first_pass) == len(set(first_pass)) == 55  # 24 read by 2 ranks, 31 of the 32 read by 1 after


# The paper configs run on their own datasets' formats in tests/test_paper_configs.py.
CONFIGS = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").glob("demo_*.yaml"))


@pytest.mark.parametrize("config", CONFIGS)
def test_every_demo_config_runs_on_demo_shards(demo_shards, tmp_path, config):
    """Each demo config, with a small train.max_steps, trains and evaluates in one process."""
    overrides = [f"run.dir={tmp_path / 'run'}", f"data.shards={demo_shards}", "train.max_steps=2",
                 "model.encoder=efficientnet_lite0", "model.width=32", "model.depth=2", "model.state_size=8",
                 "data.image_size=64", "data.frames=2", "data.long_frames=2", "data.short_frames=2",
                 "data.batch_size=2", "data.num_workers=1", "logging.progress_bar=false", "run.init_from=null",
                 "train.global_batch_size=0"]
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


def test_deepspeed_launcher_starts_two_cpu_ranks_and_leaves_no_shared_memory(demo_shards, tmp_path):
    """Under the deepspeed launcher (it sets LOCAL_SIZE) DeepSpeed maps one /dev/shm buffer per rank,
    named by MASTER_ADDR and MASTER_PORT. A stale one of a dead run on the same port (garbage in it) is
    taken over safely, and none is left when the run ends."""
    from s5video.trainer.lifecycle import SHM_DIR, shm_buffer_name
    run, port = tmp_path / "run", free_port()
    stale = [SHM_DIR / shm_buffer_name(r, "127.0.0.1", str(port)) for r in range(2)]
    for f in stale:
        f.write_bytes(bytes(range(256)) * 4096)
    try:
        out = finish(launch(run, demo_shards, *LR, "train.max_steps=2", "train.eval_every_steps=100",
                            "checkpoint.every_steps=100", launcher="deepspeed", port=port), run_dir=run)
        assert "deepspeed_shm_comm_op built successfully" in out
        info = json.loads((run / "run_info.json").read_text())
        assert info["world_size"] == 2 and len(info["ranks"]) == 2
        left = sorted(x.name for x in SHM_DIR.glob(f"deepspeed_allreduce_buffer_*_{port}_*"))
        assert not left, left
    finally:
        for f in stale:
            f.unlink(missing_ok=True)
