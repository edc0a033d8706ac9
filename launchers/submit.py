#!/usr/bin/env python
"""Submit s5video training stages to Slurm (or run them here) through submitit.

    python launchers/submit.py [--nodes N] [--gpus-per-node G] [--partition P] [--time MIN]
        [--account A] [--qos Q] [--local] [--dry-run] [--wait]
        STAGE [--config FILE] [TASK ...] [section.key=value | STAGE:section.key=value ...]

STAGE is ``pretrain`` (LSMCL, default config ``configs/k600_pretrain.yaml``), ``finetune TASK...``
(coin, breakfast, charades, lvu_<task>, demo, ... or a config path) or ``pipeline``: pretraining,
then the finetunes of its config's ``launch.finetunes`` (or the TASKs given) as dependent jobs
(Slurm ``afterok``), each with ``run.init_from`` set to the pretraining run unless its config says
``launch.init_from_pretrain: false`` (the from-scratch baselines).

Resources come from each stage config's ``launch:`` section; the flags override them for every
stage, except that in a ``pipeline`` the sizing flags (``--nodes``, ``--gpus-per-node``,
``--tasks-per-node``, ``--cpus-per-task``) size the pretraining job only: each finetune keeps its
config's allocation, which its global batch was chosen for (``coin:launch.nodes=2`` changes one). ``section.key=value`` overrides apply to every stage, ``NAME:section.key=value`` to one
(``pretrain:train.max_steps=10``, ``demo:train.max_steps=5``).

Resubmitting a stage (or a pipeline) resumes each run from its last checkpoint
(``checkpoint.resume: auto``), also with other ``--nodes``: the trainer resumes elastically
(trainer.checkpoint.prepare_elastic), and the plan says so; so does a requeued job whose node count
was changed while it was pending (``scontrol update JobId=... NumNodes=...``).

``--local`` runs the same stages one after the other on this machine with submitit's
LocalExecutor (``nodes x tasks_per_node`` processes), printing rank 0's output as it comes.
``--dry-run`` prints the jobs, resources, dependencies, sbatch headers and commands and submits
nothing. ``--wait`` (Slurm) follows the jobs to the end; without it the job ids are printed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if sys.path and os.path.abspath(sys.path[0]) == os.path.join(_REPO, "launchers"):
    sys.path[0] = _REPO  # `python launchers/submit.py`: import the packages

from s5video.launchers.job import FeatureJob, TrainJob  # noqa: E402
from s5video.launchers.tasks import list_tasks, task_config, task_name  # noqa: E402
from s5video.trainer.config import ConfigError, LaunchConfig, load_config  # noqa: E402
from s5video.trainer.preflight import elastic_resume, preflight, train_samples  # noqa: E402
from s5video.trainer.schedule import Schedule, resolve_schedule  # noqa: E402
from s5video.trainer.compat import submitit_sbatch_script  # noqa: E402

DEFAULT_PRETRAIN = "configs/k600_pretrain.yaml"
_ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING",
           "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT"}
_TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
             "DEADLINE", "PREEMPTED"}


class LaunchError(RuntimeError):
    """A stage could not be planned, submitted or did not finish."""


@dataclass
class Stage:
    """One job: a config + overrides with its resources; ``after`` names the stages it waits for.
    A ``features`` stage extracts the frozen-feature cache (``data.features``) its finetunes train on;
    its ``run_dir`` is that cache directory."""

    name: str
    config: str
    overrides: list[str]
    launch: LaunchConfig
    run_dir: str
    mode: str
    after: list[str] = field(default_factory=list)  # the stages it waits for (Slurm afterok)
    kind: str = "train"  # "train" (trainer/main.py) or "features" (tools/extract_features.py, one task)
    schedule: Schedule | None = None  # resolved for the stage's world size (None: sample count unknown)
    elastic: str | None = None  # resumes a checkpoint of another world size (trainer.preflight.elastic_resume)
    reason: str | None = None  # features: why the cache is (re)extracted
    splits: list[str] = field(default_factory=list)  # features: the splits its finetunes read
    job: object = field(default=None, repr=False)

    @property
    def tasks_per_node(self) -> int:
        """Trainer processes per node: ``launch.tasks_per_node``, else one per GPU (at least 1)."""
        return self.launch.tasks_per_node or max(1, self.launch.gpus_per_node)

    @property
    def world_size(self) -> int:
        return self.launch.nodes * self.tasks_per_node


# ----------------------------------------------------------------------------- planning

_FLAG_TO_LAUNCH = {"nodes": "nodes", "gpus_per_node": "gpus_per_node", "tasks_per_node": "tasks_per_node",
                   "cpus_per_task": "cpus_per_task", "partition": "partition", "time": "time_min",
                   "account": "account", "qos": "qos", "max_requeues": "max_requeues"}
_SIZE_FLAGS = ("nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task")


def split_overrides(items: list[str]) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """``items`` -> (task names, overrides for every stage, {stage name: its own overrides})."""
    tasks, common, scoped = [], [], {}
    for it in items:
        if "=" not in it:
            tasks.append(it)
            continue
        key = it.split("=", 1)[0]
        if ":" in key:
            stage, rest = it.split(":", 1)
            scoped.setdefault(stage, []).append(rest)
        else:
            common.append(it)
    return tasks, common, scoped


def make_stage(name: str, config: str, overrides: list[str], flags: dict, init_from_pending: bool = False,
               features_pending: bool = False) -> Stage:
    """Load and validate ``config`` + ``overrides`` and check it against the shards and the file system
    (trainer.preflight: splits, run.init_from and the feature cache - unless an earlier stage writes
    them -, weights, classes, the global batch for this world size) -> Stage. Raises ConfigError naming
    the stage and the key."""
    cfg = load_config(config, overrides)
    launch = dataclasses.replace(cfg.launch, **{_FLAG_TO_LAUNCH[k]: v for k, v in flags.items() if v is not None})
    if launch.nodes < 1 or launch.gpus_per_node < 0 or launch.tasks_per_node < 0:
        raise ConfigError(f"{name}: launch.nodes must be >= 1 and gpus/tasks per node >= 0, got {launch}")
    stage = Stage(name, config, list(overrides), launch, cfg.run.dir, cfg.run.mode)
    try:
        samples = train_samples(cfg, preflight(cfg, init_from_pending=init_from_pending,
                                               features_pending=features_pending))
        stage.elastic = elastic_resume(cfg, stage.world_size)  # a resubmission with other --nodes
        if samples and cfg.run.mode != "eval":
            stage.schedule = resolve_schedule(cfg, samples, stage.world_size)
    except ConfigError as e:
        raise ConfigError(f"{name} ({config}): {e}") from None
    return stage


def features_overrides(config: str, overrides: list[str], features: bool) -> list[str]:
    """A finetune's overrides for training on frozen features: ``data.backend=features`` first when
    ``features`` (a pipeline whose pretraining config sets ``launch.finetune_features``), and, for a
    finetune on features that names no ``data.features``, ``<run.dir's parent>/features/<key>``. The
    key is a hash of the cache the finetune needs (trainer.preflight.feature_cache_meta), so finetunes
    with the same encoder, input and shards share one extraction and any other setting gets its own
    directory. They come before ``overrides``: a stage's own ``data.backend`` / ``data.features`` wins."""
    import hashlib

    from s5video.trainer.preflight import feature_cache_meta, splits_read

    first = ["data.backend=features"] if features else []
    cfg = load_config(config, first + overrides)
    if cfg.data.backend != "features" or cfg.data.features:
        return first + overrides
    splits = sorted({p for v in splits_read(cfg).values() for p in v.split("+")})
    want = {s: feature_cache_meta(cfg, s) for s in splits}
    key = hashlib.sha1(json.dumps(want, sort_keys=True).encode()).hexdigest()[:10]
    root = os.path.join(os.path.dirname(os.path.normpath(cfg.run.dir)), "features", key)
    return first + [f"data.features={root}"] + overrides


def features_stage(name: str, config: str, overrides: list[str], planned: dict) -> Stage | None:
    """The stage that extracts the frozen-feature cache finetune ``name`` trains on (``data.backend:
    features``), or None when it reads video or its cache is there and matches its config
    (trainer.preflight.feature_cache_stale: the encoder, its input, the clips and the shards).

    One extraction per cache directory: ``planned`` (directory -> (the cache wanted, its stage or
    None, the first finetune), updated) lets finetunes that share a directory share its stage.
    Raises LaunchError when two finetunes want different caches in one directory."""
    from s5video.trainer.preflight import feature_cache_meta, feature_cache_stale, splits_read

    cfg = load_config(config, overrides)
    if cfg.data.backend != "features" or not cfg.data.features:
        return None  # (no directory: preflight names the key)
    splits = list(dict.fromkeys(p for v in splits_read(cfg).values() for p in v.split("+")))
    want = {s: feature_cache_meta(cfg, s) for s in splits}
    root = os.path.realpath(cfg.data.features)
    if root in planned:
        theirs, stage, first = planned[root]
        if any(theirs.get(s, want[s]) != want[s] for s in splits):
            raise LaunchError(f"{name} and {first} want different feature caches in data.features="
                              f"{cfg.data.features}; set {name}:data.features=<another directory>")
        theirs.update(want)
        if stage:
            stage.splits = list(dict.fromkeys(stage.splits + splits))
        return stage
    stale = [why for s in splits if (why := feature_cache_stale(cfg, s))]
    stage = None
    if stale:
        launch = dataclasses.replace(cfg.launch, nodes=1, tasks_per_node=1,
                                     gpus_per_node=min(1, cfg.launch.gpus_per_node))
        stage = Stage(f"features_{name}", config, list(overrides), launch, cfg.data.features, "features",
                      kind="features", reason=stale[0])
    if stage:
        stage.splits = list(dict.fromkeys(stage.splits + splits))
    planned[root] = (want, stage, name)
    return stage


def plan(args) -> list[Stage]:
    """The stages of ``args.stage`` with their overrides, resources and dependencies, each checked
    (trainer.preflight) before anything is submitted. Raises ConfigError / LaunchError."""
    tasks, common, scoped = split_overrides(args.items)
    flags = {k: getattr(args, k, None) for k in _FLAG_TO_LAUNCH}
    config = args.config or DEFAULT_PRETRAIN
    if args.stage == "pretrain" and tasks:
        raise LaunchError(f"pretrain takes no tasks, got {tasks} (did you mean pipeline?)")
    if args.stage == "pipeline":
        pre_launch = load_config(config, common + scoped.get("pretrain", [])).launch
        tasks = tasks or pre_launch.finetunes
        if not tasks:
            raise LaunchError(f"pipeline: no finetune tasks (give TASKs or set launch.finetunes in {config})")
    elif args.stage == "finetune":
        tasks = [args.config, *tasks] if args.config else tasks
        if not tasks:
            raise LaunchError(f"finetune needs at least one TASK; known: {', '.join(list_tasks())}")
    names = (["pretrain"] if args.stage != "finetune" else []) + [task_name(t) for t in tasks]
    if set(scoped) - set(names):
        raise LaunchError(f"overrides for unknown stages {sorted(set(scoped) - set(names))}; stages are {names}")
    configs = {}
    for t in tasks:
        try:
            configs[t] = task_config(t)
        except ValueError as e:
            raise LaunchError(str(e)) from None
    stages: list[Stage] = []
    if args.stage != "finetune":
        pre = make_stage("pretrain", config, common + scoped.get("pretrain", []), flags)
        if pre.mode != "pretrain":
            raise ConfigError(f"{config}: run.mode is {pre.mode!r}; the pretrain stage needs run.mode=pretrain")
        stages.append(pre)
    features: dict = {}  # cache directory -> (the cache wanted, the stage extracting it or None, first finetune)
    finetunes: list[Stage] = []
    for t in tasks:
        name, cfg_path = task_name(t), configs[t]
        own = common + scoped.get(name, [])
        own = features_overrides(cfg_path, own, args.stage == "pipeline" and pre_launch.finetune_features)
        ft_flags = {k: v for k, v in flags.items() if not (args.stage == "pipeline" and k in _SIZE_FLAGS)}
        extract = features_stage(name, cfg_path, own, features)
        pending = {"features_pending": extract is not None}
        if args.stage == "pipeline" and load_config(cfg_path, own).launch.init_from_pretrain:
            ft = make_stage(name, cfg_path, own + [f"run.init_from={stages[0].run_dir}"], ft_flags,
                            init_from_pending=True, **pending)
            ft.after.append("pretrain")
        else:
            ft = make_stage(name, cfg_path, own, ft_flags, **pending)
        ft.after += [extract.name] if extract else []
        finetunes.append(ft)
    stages += [st for _, st, _ in features.values() if st] + finetunes  # the extractions wait for nothing (the encoder is frozen)
    dirs = [s.run_dir for s in stages if s.kind == "train"]
    if len(set(dirs)) != len(dirs):
        raise LaunchError(f"two stages share a run.dir: {dirs}; set NAME:run.dir=... for one of them")
    return stages


# ----------------------------------------------------------------------------- executors

def make_executor(stage: Stage, local: bool, dependency: str | None = None):
    """A submitit executor for ``stage``: LocalExecutor (``local``) or SlurmExecutor."""
    import submitit

    folder = Path(stage.run_dir) / "submitit"
    L = stage.launch
    if local:
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(tasks_per_node=stage.world_size, nodes=1, timeout_min=L.time_min,
                             gpus_per_node=min(stage.world_size, _local_gpus()))
        return ex
    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=L.max_requeues)
    params = dict(job_name=f"s5video-{stage.name}", nodes=L.nodes, ntasks_per_node=stage.tasks_per_node,
                  cpus_per_task=L.cpus_per_task, time=L.time_min, partition=L.partition, account=L.account,
                  qos=L.qos, gpus_per_node=L.gpus_per_node or None, dependency=dependency,
                  additional_parameters={"requeue": True})  # explicit: clusters may default JobRequeue=0
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return ex


def _local_gpus() -> int:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def train_job(stage: Stage) -> TrainJob | FeatureJob:
    if stage.kind == "features":
        return FeatureJob(stage.config, stage.overrides, os.getcwd(), stage.splits)
    return TrainJob(stage.config, stage.overrides, os.getcwd(), stage.launch.max_requeues)


def trainer_command(stage: Stage) -> str:
    """What each task runs: the trainer (what ``deepspeed trainer/main.py`` would run), or the feature
    extraction of a ``features`` stage."""
    if stage.kind == "features":
        return " ".join(["tools/extract_features.py", "--config", stage.config, "--splits", ",".join(stage.splits),
                         *stage.overrides])
    return " ".join(["trainer/main.py", "--config", stage.config, *stage.overrides])


def print_plan(stages: list[Stage], local: bool) -> None:
    """``--dry-run``: every job, its resources, dependency, sbatch header and command."""
    print(f"{len(stages)} job(s), {'local (LocalExecutor)' if local else 'Slurm (submitit)'}; nothing submitted")
    for i, s in enumerate(stages, 1):
        L = s.launch
        # the ids exist once submitted
        dep = "afterok:" + ":".join(f"{a.upper()}_JOB_ID" for a in s.after) if s.after else "none"
        where = f"cache {s.run_dir} ({s.reason})" if s.kind == "features" else f"run dir {s.run_dir}"
        print(f"\n[{i}] {s.name}: {s.mode}, config {s.config}, {where}")
        print(f"    resources: {L.nodes} node(s) x {s.tasks_per_node} task(s) = world size {s.world_size}; "
              f"{L.gpus_per_node} GPU(s)/node, {L.cpus_per_task} CPU(s)/task, time {L.time_min} min, "
              f"partition {L.partition or '(default)'}, account {L.account or '-'}, qos {L.qos or '-'}, "
              f"max requeues {L.max_requeues}")
        print(f"    depends on: {dep}")
        if s.elastic:
            print(f"    elastic resume: {s.elastic}")
        if s.schedule and s.kind == "train":
            print(f"    schedule: {s.schedule.describe(s.world_size, load_config(s.config, s.overrides).data.batch_size)}")
        print(f"    each task runs: {trainer_command(s)}")
        if not local:
            ex = make_executor(s, local=False, dependency=dep if s.after else None)
            header = submitit_sbatch_script(ex)
            print("    sbatch script:\n" + "\n".join("      " + line for line in header.splitlines() if line))


# ----------------------------------------------------------------------------- running

def _slurm_state(job_id: str) -> tuple[str, str]:
    """(JobState, Reason) from ``scontrol show job`` - works without accounting (sacct)."""
    p = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        return "GONE", p.stderr.strip()
    state = re.search(r"\bJobState=(\S+)", p.stdout)
    reason = re.search(r"\bReason=(\S+)", p.stdout)
    return (state.group(1) if state else "UNKNOWN"), (reason.group(1) if reason else "")


class _Follower:
    """Copies new output of task 0's stdout/stderr files to ours while a job runs."""

    def __init__(self, job):
        self.job, self.offsets = job, {}

    def poll(self) -> None:
        for path, out in ((self.job.paths.stdout, sys.stdout), (self.job.paths.stderr, sys.stderr)):
            try:
                with open(path, "rb") as f:
                    f.seek(self.offsets.get(path, 0))
                    data = f.read()
            except FileNotFoundError:
                continue
            if data:
                self.offsets[path] = self.offsets.get(path, 0) + len(data)
                out.write(data.decode(errors="replace"))
                out.flush()


def wait_for(stage: Stage, follow: bool = True, poll_s: float = 2.0, grace_s: float = 60.0) -> dict:
    """Wait for ``stage.job`` and return its result (rank 0's dict from :class:`TrainJob`).

    Without Slurm accounting submitit only sees state UNKNOWN, so the job's end is read from the
    result file, or from ``scontrol show job`` when the job ended without one (killed, failed
    before Python ran, dependency never satisfied).

    Raises:
        LaunchError: the job failed, was cancelled or can never start; the message has the log tail.
    """
    from submitit.slurm.slurm import SlurmJob

    job, follower = stage.job, _Follower(stage.job)
    ended_at = None
    while True:
        if follow:
            follower.poll()
        active = False
        if isinstance(job, SlurmJob):
            state, reason = _slurm_state(job.job_id)
            if state == "PENDING" and reason == "DependencyNeverSatisfied":
                subprocess.run(["scancel", job.job_id], timeout=60)
                raise LaunchError(f"{stage.name} (job {job.job_id}): its dependency {stage.after} failed; cancelled")
            # a requeued job runs again: a result file written before the requeue is not its result
            active = state in _ACTIVE
            if state in _TERMINAL or state == "GONE":
                ended_at = ended_at or time.monotonic()
                if not job.done() and time.monotonic() - ended_at > grace_s:
                    raise LaunchError(f"{stage.name} (job {job.job_id}) ended {state} without a result; "
                                      f"log tail:\n{_tail(job.paths.stderr)}")
            else:
                ended_at = None
        if not active and job.done():
            break
        time.sleep(poll_s)
    if follow:
        follower.poll()
    try:
        return job.results()[0]  # rank 0
    except Exception as e:  # submitit re-raises the task's exception with its traceback
        raise LaunchError(f"{stage.name} (job {job.job_id}) failed: {e}") from None


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except FileNotFoundError:
        return f"({path} missing)"


def run(stages: list[Stage], local: bool, wait: bool) -> list[dict]:
    """Submit (Slurm, dependencies as afterok) or run (local, in order) ``stages``.

    Returns the results of the stages waited for (local: all; Slurm: all with ``wait``, else none).
    Each stage's ``<run.dir>/submitit/job.json`` records its job id, dependency and log paths.
    """
    results = []
    by_name = {}
    for s in stages:
        dependency = None
        if s.after and not local:
            dependency = "afterok:" + ":".join(by_name[a].job.job_id for a in s.after)
        ex = make_executor(s, local, dependency)
        s.job = ex.submit(train_job(s))
        by_name[s.name] = s
        record = {"stage": s.name, "job_id": s.job.job_id, "config": s.config, "overrides": s.overrides,
                  "run_dir": s.run_dir, "world_size": s.world_size, "after": s.after, "dependency": dependency,
                  "stdout": str(s.job.paths.stdout), "stderr": str(s.job.paths.stderr)}
        Path(ex.folder, "job.json").write_text(json.dumps(record, indent=1))
        print(f"submitted {s.name}: job {s.job.job_id} ({s.world_size} ranks"
              f"{', after ' + dependency if dependency else ''}); logs {s.job.paths.stdout}", flush=True)
        if s.elastic:
            print(f"  {s.name} {s.elastic}", flush=True)
        if s.kind == "features" and s.reason:
            print(f"  {s.name}: {s.reason}", flush=True)
        if local:  # one stage at a time on this machine, output as it comes
            results.append(wait_for(s))
            print(f"finished {s.name}: {s.run_dir}", flush=True)
    if wait and not local:
        for s in stages:
            results.append(wait_for(s, follow=len(stages) == 1))
            print(f"finished {s.name}: {s.run_dir}", flush=True)
    return results


# ----------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--nodes", type=int, help="nodes per job (default: launch.nodes)")
    common.add_argument("--gpus-per-node", dest="gpus_per_node", type=int, help="GPUs per node (0: CPU nodes)")
    common.add_argument("--tasks-per-node", dest="tasks_per_node", type=int,
                        help="trainer processes per node (default: one per GPU)")
    common.add_argument("--cpus-per-task", dest="cpus_per_task", type=int)
    common.add_argument("--partition")
    common.add_argument("--time", type=int, help="time limit per job, minutes")
    common.add_argument("--account")
    common.add_argument("--qos")
    common.add_argument("--max-requeues", dest="max_requeues", type=int)
    common.add_argument("--local", action="store_true", help="run here with submitit's LocalExecutor")
    common.add_argument("--dry-run", dest="dry_run", action="store_true", help="print the plan, submit nothing")
    common.add_argument("--wait", action="store_true", help="Slurm: wait for every job and report")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], parents=[common],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, help_ in (("pretrain", "LSMCL pretraining"), ("finetune", "finetune TASK..."),
                        ("pipeline", "pretrain, then dependent finetunes")):
        sp = sub.add_parser(name, parents=[common], help=help_)
        sp.add_argument("--config", default=None, help="config file (pretrain default: " + DEFAULT_PRETRAIN + ")")
        sp.add_argument("items", nargs="*", metavar="TASK|key=value")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for flag in ("local", "dry_run", "wait"):
        setattr(args, flag, getattr(args, flag, False))
    try:
        stages = plan(args)
        if args.dry_run:
            print_plan(stages, args.local)
            return 0
        results = run(stages, args.local, args.wait)
    except (ConfigError, LaunchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if results and len(results) == len(stages):  # every stage finished: summary.json + table
        from s5video.launchers import summary
        runs = [s for s in stages if s.kind == "train"]
        out = os.path.commonpath([os.path.abspath(os.path.dirname(s.run_dir.rstrip("/"))) for s in runs])
        summ = summary.summarize({s.name: s.run_dir for s in runs})
        path = summary.write(summ, out)
        print("\n" + summary.table(summ))
        print(f"\nsummary: {os.path.relpath(path)} (plots: curves.png, confusion_<stage>.png next to it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
