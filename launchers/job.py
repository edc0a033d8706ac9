"""What each Slurm (or local) task runs: :class:`TrainJob`, a picklable, requeueable trainer call,
and :class:`FeatureJob`, the one-task extraction of a frozen-feature cache its finetunes wait for.

submitit pickles a ``TrainJob`` and starts one Python process per task (``srun`` on Slurm, a
subprocess with the local executor). Each process sets up the distributed environment
(:mod:`launchers.slurm_env`) and runs the trainer exactly as ``deepspeed trainer/main.py`` does
(:func:`trainer.main.make_trainer`).

Preemption and time limits: Slurm sends SIGUSR2 ``signal_delay_s`` before the time limit (and
on preemption, with SIGTERM). The trainer catches both, saves a checkpoint at the next step
boundary on every rank and returns; then rank 0 hands over to submitit's own handler, which
calls :meth:`TrainJob.checkpoint` (the same job, ``checkpoint.resume=auto``, one more requeue
counted) and runs ``scontrol requeue``. After ``launch.max_requeues`` requeues the job fails
instead, with the reason in its log, so ``afterok`` dependents do not start from a half-trained
checkpoint.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from s5video.trainer.compat import submitit_requeue_signal


class RequeueLimitReached(RuntimeError):
    """The job was stopped by a signal and has used up ``launch.max_requeues``."""


class TrainJob:
    """One training stage: ``config`` + ``overrides``, run in ``workdir`` by every task.

    Args:
        config: config file path (relative to ``workdir`` or absolute).
        overrides: ``section.key=value`` strings, applied after the file.
        workdir: directory the tasks run in (the submitting shell's working directory).
        max_requeues: requeues allowed after preemption/time limit before the job fails.
        requeues: requeues so far (set by :meth:`checkpoint`).
    """

    def __init__(self, config: str, overrides: list[str], workdir: str, max_requeues: int = 3,
                 requeues: int = 0):
        self.config, self.overrides, self.workdir = config, list(overrides), workdir
        self.max_requeues, self.requeues = max_requeues, requeues

    def __call__(self) -> dict:
        import submitit

        from s5video.launchers.slurm_env import distributed_env
        from s5video.trainer.main import make_trainer

        os.chdir(self.workdir)
        job_env = submitit.JobEnvironment()
        os.environ.update(distributed_env(job_env))
        # submitit installed its checkpoint-and-requeue handler on SIGUSR2; the trainer replaces it
        # while it runs, and we call it ourselves once the trainer has saved.
        requeue_handler = signal.getsignal(submitit_requeue_signal(job_env))
        overrides = self.overrides + (["checkpoint.resume=auto"] if self.requeues else [])
        trainer = make_trainer(self.config, overrides)
        print(f"[launcher] rank {os.environ['RANK']}/{os.environ['WORLD_SIZE']} on "
              f"{os.environ.get('SLURMD_NODENAME', job_env.hostname)}, master "
              f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}, requeues so far {self.requeues}",
              flush=True)
        code = trainer.run()
        if trainer.stopped_by and not any(r.startswith("SIG") for r in trainer.stopped_by):
            raise RuntimeError(f"stopped ({', '.join(trainer.stopped_by)}); a checkpoint was saved")
        if trainer.stopped_by:  # a signal; a checkpoint was saved: requeue (rank 0) or fail
            print(f"[launcher] stopped by {', '.join(trainer.stopped_by)}", flush=True)
            if callable(requeue_handler):
                try:
                    requeue_handler(submitit_requeue_signal(job_env), None)  # rank 0: checkpoint() + requeue + exit
                except subprocess.CalledProcessError as e:
                    if e.returncode >= 0:
                        raise
                    # `scontrol requeue` was killed by the requeue it asked for (Slurm signals every
                    # process of the job, this one included): the job is requeued; leave no result
                    print(f"[launcher] {e.cmd} ended by signal {-e.returncode} while Slurm requeued the job",
                          flush=True)
                    raise SystemExit(-1) from None
                if job_env.global_rank != 0:
                    return {"status": "preempted", "rank": job_env.global_rank}
            raise RequeueLimitReached(f"stopped by {trainer.stopped_by} and not requeued")
        if code != 0:
            raise RuntimeError(f"trainer exited with code {code}")
        results = Path(trainer.cfg.run.dir) / "results.json"
        return {"status": "finished", "run_dir": trainer.cfg.run.dir, "requeues": self.requeues,
                "results": json.loads(results.read_text()) if results.exists() else None}

    def checkpoint(self, *args, **kwargs):
        """submitit's hook on preemption/timeout: the same job resuming from its last checkpoint.

        Returns None (no requeue; the job fails with that reason) after ``max_requeues`` requeues.
        """
        import submitit

        if self.requeues >= self.max_requeues:
            print(f"[launcher] requeue limit reached (launch.max_requeues={self.max_requeues}): "
                  "not requeueing; resubmit to continue from the last checkpoint", flush=True)
            return None
        print(f"[launcher] requeueing ({self.requeues + 1}/{self.max_requeues}); the job resumes from "
              "its last checkpoint", flush=True)
        return submitit.helpers.DelayedSubmission(
            TrainJob(self.config, self.overrides, self.workdir, self.max_requeues, self.requeues + 1))

    def __repr__(self) -> str:
        return f"TrainJob({self.config!r}, {self.overrides!r}, requeues={self.requeues})"


class FeatureJob:
    """One ``features`` stage: ``tools/extract_features.py --config config --splits ... overrides`` in
    ``workdir``, a single task. It writes ``data.features`` of the config, which the finetunes that
    depend on it (Slurm ``afterok``) train on. A requeue starts the extraction over (it is short next
    to training: the encoder sees each clip once).

    Args:
        config, overrides: the finetune's config and overrides (the cache is what it reads).
        workdir: directory the task runs in. splits: the splits to extract (every split its finetunes read).
    """

    def __init__(self, config: str, overrides: list[str], workdir: str, splits: list[str]):
        self.config, self.overrides, self.workdir, self.splits = config, list(overrides), workdir, list(splits)

    def __call__(self) -> dict:
        from s5video.tools import extract_features
        from s5video.trainer.config import load_config

        os.chdir(self.workdir)
        code = extract_features.main(["--config", self.config, "--splits", ",".join(self.splits), *self.overrides])
        if code != 0:
            raise RuntimeError(f"extract_features.py exited with code {code}")
        return {"status": "finished", "features": load_config(self.config, self.overrides).data.features}

    def checkpoint(self, *args, **kwargs):
        """submitit's hook on preemption/timeout: extract again from the start."""
        import submitit

        return submitit.helpers.DelayedSubmission(FeatureJob(self.config, self.overrides, self.workdir, self.splits))

    def __repr__(self) -> str:
        return f"FeatureJob({self.config!r}, {self.overrides!r}, splits={self.splits})"
