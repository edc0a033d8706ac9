"""launchers/submit.py: plans (dry run), and real jobs on a two-node Slurm started by the tests.

The Slurm tests start munged + slurmctld + two slurmd (n1, n2) on this host (tests/slurm_cluster.py)
and are skipped, with the reason, where Slurm cannot start. Without accounting, submitit sees
job state UNKNOWN: the launcher reads ends from result files and ``scontrol``.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from s5video.launchers import submit
from s5video.launchers.slurm_env import master_port, slurm_master_addr
from s5video.trainer.config import load_config
from tests.helpers import TINY as HELPER_TINY
from tests.helpers import paper_stubs
from tests.slurm_cluster import SlurmCluster, SlurmUnavailable

REPO = Path(__file__).resolve().parents[1]
# A small S5 so that a 2-rank job on 2 shared cores takes seconds per step, not minutes.
TINY = [o for o in HELPER_TINY if not o.startswith(("run.init_from", "data.frames"))]
SLURM_FLAGS = ["--nodes", "2", "--gpus-per-node", "0", "--tasks-per-node", "1", "--cpus-per-task", "1"]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launchers/submit.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


# ----------------------------------------------------------------------------- plans

@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    return paper_stubs(tmp_path_factory.mktemp("paper_stubs"))


def test_dry_run_k600_pretrain_on_4_nodes(stubs):
    r = cli("--nodes", "4", "--dry-run", "pretrain", *stubs["common"], *stubs["pretrain"])
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "1 job(s)" in out and "config configs/k600_pretrain.yaml" in out
    assert "4 node(s) x 8 task(s) = world size 32" in out
    # 4,600 unlabelled train+test clips, global batch 256 (= 8 x 32 ranks x 1)
    assert "schedule: " in out and "global batch 256 = 8 clips x 32 ranks x 1 accumulation" in out
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --signal=USR2@90", "#SBATCH --requeue", "#SBATCH --time=4320"):
        assert line in out, line
    assert "srun --unbuffered" in out and "each task runs: trainer/main.py --config configs/k600_pretrain.yaml" in out


def test_dry_run_pipeline_shows_dependent_finetunes(stubs):
    r = cli("--nodes", "4", "pipeline", "--dry-run", *[o for v in stubs.values() for o in v])
    assert r.returncode == 0, r.stderr
    from s5video.trainer.config import load_config
    finetunes = load_config(REPO / "configs/k600_pretrain.yaml").launch.finetunes
    assert f"{1 + len(finetunes)} job(s)" in r.stdout
    assert r.stdout.count("depends on: afterok:PRETRAIN_JOB_ID") == len(finetunes)
    assert r.stdout.count("#SBATCH --dependency=afterok:PRETRAIN_JOB_ID") == len(finetunes)
    assert r.stdout.count("run.init_from=runs/k600_pretrain") == len(finetunes)
    assert "config configs/lvu/relationship.yaml" in r.stdout


def test_plan_scoped_overrides_and_baselines(demo_shards, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the configs' run dirs (runs/demo/...) here, not in a checkout that ran the demo
    args = submit.build_parser().parse_args(
        ["--local", "pipeline", "--config", str(REPO / "configs/demo_pretrain.yaml"), f"data.shards={demo_shards}", "train.max_steps=3",
         "pretrain:train.max_steps=5", "demo_vis4mer:model.depth=1", "pretrain:launch.finetune_features=false"])
    stages = {s.name: s for s in submit.plan(args)}
    assert list(stages) == ["pretrain", "demo", "demo_scratch", "demo_vis4mer", "demo_caption"]
    assert stages["pretrain"].overrides == [f"data.shards={demo_shards}", "train.max_steps=3", "train.max_steps=5",
                                            "launch.finetune_features=false"]
    assert stages["demo"].after == ["pretrain"] and "run.init_from=runs/demo/pretrain" in stages["demo"].overrides
    # the baselines never start from the pretraining run and do not wait for it
    for b in ("demo_scratch", "demo_vis4mer", "demo_caption"):
        assert stages[b].after == [] and not any(o.startswith("run.init_from") for o in stages[b].overrides)
    assert stages["demo_vis4mer"].overrides[-1] == "model.depth=1"
    assert stages["demo"].world_size == 2


def test_pipeline_finetunes_share_one_feature_extraction(demo_shards, tmp_path, monkeypatch):
    """The demo pipeline (launch.finetune_features): the three classifiers wait for one extraction,
    the captioner (another encoder input) for its own; the S5 finetune also waits for pretraining."""
    monkeypatch.chdir(tmp_path)  # the configs' run dirs (runs/demo/...) here
    args = submit.build_parser().parse_args(
        ["--local", "pipeline", "--config", str(REPO / "configs/demo_pretrain.yaml"), f"data.shards={demo_shards}"])
    stages = {s.name: s for s in submit.plan(args)}
    assert list(stages) == ["pretrain", "features_demo", "features_demo_caption", "demo", "demo_scratch",
                            "demo_vis4mer", "demo_caption"]
    assert stages["demo"].after == ["pretrain", "features_demo"]
    assert stages["demo_scratch"].after == stages["demo_vis4mer"].after == ["features_demo"]
    assert stages["demo_caption"].after == ["features_demo_caption"]
    cache = {n: load_config(REPO / stages[n].config, stages[n].overrides).data for n in stages if n.startswith("demo")}
    assert {c.backend for c in cache.values()} == {"features"}
    assert cache["demo"].features == cache["demo_scratch"].features == cache["demo_vis4mer"].features
    assert cache["demo_caption"].features != cache["demo"].features
    assert stages["features_demo"].run_dir == cache["demo"].features and stages["features_demo"].splits == [
        "train", "val", "test"]
    assert stages["features_demo"].world_size == 1


def test_features_stage_extracts_once_and_a_changed_input_extracts_again(demo_shards, tmp_path):
    """`submit.py --local finetune ... data.backend=features`: a features stage writes the cache, the
    finetune trains on it; planned again, the cache is reused; a changed encoder input gets a new cache
    directory, and a cache directory reused with another input is re-extracted (with the reason)."""
    run = ["configs/demo_finetune.yaml", f"data.shards={demo_shards}", *TINY, "data.frames=2",
           "data.backend=features", "train.max_steps=2", "train.eval_every_steps=100", "launch.tasks_per_node=1"]
    r = cli("--local", "finetune", *run, f"run.dir={tmp_path / 'ft'}", timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "submitted features_demo_finetune" in r.stdout and "finished demo_finetune" in r.stdout
    res = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert res["test"]["videos"] == 21  # the demo's test split, read from the cache
    cache = tmp_path / "features"  # next to the run directory
    (key,) = os.listdir(cache)
    stamp = (cache / key / "train.beton").stat().st_mtime
    again = cli("--local", "--dry-run", "finetune", *run, f"run.dir={tmp_path / 'ft2'}")
    assert again.returncode == 0 and "features_demo_finetune" not in again.stdout and f"features/{key}" in again.stdout
    assert (cache / key / "train.beton").stat().st_mtime == stamp
    bigger = cli("--local", "--dry-run", "finetune", *run, "data.image_size=96", f"run.dir={tmp_path / 'ft3'}")
    assert bigger.returncode == 0 and "features_demo_finetune" in bigger.stdout and f"features/{key}" not in bigger.stdout
    reused = cli("--local", "--dry-run", "finetune", *run, "data.image_size=96", f"data.features={cache / key}",
                 f"run.dir={tmp_path / 'ft4'}")
    assert reused.returncode == 0 and "data.image_size: 96 in the config, 64 in the cache" in reused.stdout, reused.stdout
    # the trainer alone refuses the mismatched cache before training, naming the key
    direct = subprocess.run([sys.executable, "trainer/main.py", "--config", *run, "data.image_size=96",
                             f"data.features={cache / key}", f"run.dir={tmp_path / 'ft5'}"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert direct.returncode != 0 and "data.image_size: 96 in the config, 64 in the cache" in direct.stderr + direct.stdout


@pytest.mark.parametrize("args, message", [
    (["finetune", "nosuchtask"], "unknown finetune task 'nosuchtask'"),
    (["pretrain", "train.max_stepz=3"], "train.max_stepz"),
    (["pretrain", "train.zero_stage=5"], "allowed values"),
    (["pipeline", "nosuchstage:train.max_steps=3"], "unknown stages ['nosuchstage']"),
    (["finetune", "--config", "configs/demo_pretrain.yaml"], None),  # a pretraining config is not a finetune
])
def test_bad_input_is_a_clear_error(args, message, demo_shards, tmp_path):
    r = cli("--dry-run", *args, f"data.shards={demo_shards}", f"run.dir={tmp_path / 'run'}")
    if message is None:
        assert r.returncode == 0  # finetune accepts any config path; the trainer runs its run.mode
        return
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_master_port_from_job_id():
    assert master_port("1234") == master_port("1234") == 20000 + 1234
    assert 20000 <= master_port("987654321_7") < 40000
    assert master_port("5") != master_port("6")
    # a requeued attempt gets another port (and so other DeepSpeed shared-memory names)
    assert master_port("1234", 1) != master_port("1234", 0) and 20000 <= master_port("39999", 3) < 40000


# ----------------------------------------------------------------------------- a real Slurm

@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except SlurmUnavailable as e:
        pytest.skip(f"Slurm cannot start here: {e}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(cluster.conf))
        yield cluster
    cluster.stop()


def _plan(*argv: str) -> list[submit.Stage]:
    return submit.plan(submit.build_parser().parse_args(list(argv)))


def _log(stage: submit.Stage) -> str:
    return Path(stage.job.paths.stdout).read_text(errors="replace")


def test_slurm_master_addr_is_the_node_address(slurm):
    assert slurm_master_addr("n[1-2]") == "127.0.0.1"  # n1 does not resolve through DNS; NodeAddr does


def test_slurm_pretrain_on_two_nodes_preempted_requeued_and_finished(slurm, demo_shards, tmp_path):
    """`submit.py --nodes 2 pretrain`: ranks on n1 and n2; USR2 (preemption) -> checkpoint -> requeue
    -> the requeued job resumes from that checkpoint and finishes."""
    run = tmp_path / "pre"
    (stage,) = _plan(*SLURM_FLAGS, "pretrain", "--config", "configs/demo_pretrain.yaml", f"data.shards={demo_shards}",
                     f"run.dir={run}", *TINY, "train.max_steps=12", "checkpoint.every_steps=2")
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        submit.run([stage], local=False, wait=False)
        deadline = time.monotonic() + 240
        while not (run / "checkpoints" / "step00000002" / "meta.json").exists():
            assert time.monotonic() < deadline, f"no checkpoint at step 2; log:\n{_log(stage)[-3000:]}"
            time.sleep(0.5)
        # preemption as submitit models it (SlurmJob._interrupt): SIGTERM, then the USR2 requeue signal
        for sig in ("SIGTERM", "USR2"):
            subprocess.run(["scancel", "--signal", sig, stage.job.job_id], check=True)
        result = submit.wait_for(stage, follow=False, grace_s=90)
    finally:
        os.chdir(cwd)
    log = _log(stage)
    assert re.search(r"\[launcher\] stopped by (SIGTERM|SIGUSR2)", log), log[-3000:]
    assert "requeueing (1/3)" in log
    resumed = re.search(r"resumed from \S+/checkpoints/step(\d+) at step (\d+)", log)
    assert resumed, log[-3000:]
    step = int(resumed.group(2))
    assert 2 <= step < 12
    assert result["status"] == "finished" and result["requeues"] == 1
    assert json.loads((run / "results.json").read_text())["steps"] == 12
    assert (run / "checkpoints" / "step00000012" / "meta.json").exists()
    info = json.loads((run / "run_info.json").read_text())  # written again by the requeued job
    assert info["world_size"] == 2
    assert sorted(r["node"] for r in info["ranks"]) == ["n1", "n2"]
    # the requeued job trained exactly the steps after its checkpoint: step+1 .. 12
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    train_steps = [r["step"] for r in rows if r["split"] == "train"]
    assert train_steps[-(12 - step):] == list(range(step + 1, 13))


def test_slurm_pipeline_finetune_waits_for_pretrain_and_starts_from_it(slurm, demo_shards, tmp_path):
    """`submit.py --nodes 2 pipeline`: the finetune job is held by Slurm (afterok) until pretraining
    succeeded, then initialises from the pretraining checkpoint. The flags size the pretraining job;
    the finetune is sized by its own config, here changed with scoped overrides (demo:launch.*)."""
    pre, ft = tmp_path / "pre", tmp_path / "ft"
    stages = _plan(*SLURM_FLAGS, "pipeline", "--config", "configs/demo_pretrain.yaml", "demo",
                   f"data.shards={demo_shards}", *TINY, "train.max_steps=4", "checkpoint.every_steps=100",
                   f"pretrain:run.dir={pre}", f"demo:run.dir={ft}", "demo:data.frames=4",
                   "pretrain:launch.finetune_features=false",
                   "demo:train.eval_every_steps=2", "demo:launch.nodes=2", "demo:launch.tasks_per_node=1")
    assert (stages[0].launch.nodes, stages[1].launch.nodes) == (2, 2)
    assert [s.name for s in stages] == ["pretrain", "demo"]
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        submit.run(stages, local=False, wait=False)
        show = subprocess.run(["scontrol", "show", "job", "-o", stages[1].job.job_id], capture_output=True,
                              text=True, check=True).stdout
        # Slurm itself holds the finetune until the pretraining job has succeeded
        assert "JobState=PENDING" in show and f"Dependency=afterok:{stages[0].job.job_id}" in show, show
        results = [submit.wait_for(s, follow=False) for s in stages]
    finally:
        os.chdir(cwd)
    record = json.loads((ft / "submitit" / "job.json").read_text())
    assert record["dependency"] == f"afterok:{stages[0].job.job_id}"
    pre_done = (pre / "results.json").stat().st_mtime
    ft_info = json.loads((ft / "run_info.json").read_text())
    assert time.mktime(time.strptime(ft_info["started"], "%Y-%m-%dT%H:%M:%S")) >= int(pre_done)
    assert sorted(r["node"] for r in ft_info["ranks"]) == ["n1", "n2"]
    log = _log(stages[1])
    assert re.search(rf"init_from {re.escape(str(pre))}/checkpoints/step00000004: \d+ tensors loaded", log), log[-3000:]
    assert results[1]["results"]["test"]["videos"] > 0


def test_requeue_limit():
    """TrainJob.checkpoint(): the same job with one more requeue, until launch.max_requeues."""
    from s5video.launchers.job import TrainJob
    job = TrainJob("configs/demo_pretrain.yaml", ["train.max_steps=3"], str(REPO), max_requeues=2)
    again = job.checkpoint().function
    assert isinstance(again, TrainJob) and again.requeues == 1
    assert (again.config, again.overrides, again.workdir) == (job.config, job.overrides, job.workdir)
    assert again.checkpoint().function.requeues == 2
    assert again.checkpoint().function.checkpoint() is None  # the 3rd preemption fails the job instead
