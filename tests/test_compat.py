"""trainer/compat.py: each private-API workaround against the installed library, and the version guard.

The DeepSpeed workarounds run inside the trainer's own tests, against real checkpoints and process
groups: the universal conversion and the universal-load switch in test_trainer.py::
test_elastic_resume_keeps_weights_and_optimizer_state_zero_1_2_3, the model-states files in every
test that reads a checkpoint's weights (e.g. test_reliability.py's NaN test), the shared-memory
name in test_trainer.py::test_deepspeed_launcher_starts_two_cpu_ranks_and_leaves_no_shared_memory
(the file DeepSpeed itself created). Here: the guard, and the loader's and submitit's workarounds
on the libraries themselves.
"""
from __future__ import annotations

import importlib.metadata
import signal
import sys

import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from s5video.trainer import compat


def test_installed_versions_are_the_tested_ones():
    for lib in compat.TESTED:
        compat.require(lib, "test")  # the constraints file pins what TESTED names


def test_an_untested_version_is_refused_with_what_to_do(monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda lib: "9.1.0" if lib == "deepspeed" else real(lib))
    monkeypatch.delenv(compat.ALLOW_ENV, raising=False)
    with pytest.raises(compat.UntestedVersion, match=r"the universal-checkpoint conversion .* deepspeed 0\.19\.x; "
                                                     r"9\.1\.0 is installed.*constraints.txt.*S5VIDEO_ALLOW_UNTESTED=1"):
        compat.ds_to_universal("/nonexistent", "/nonexistent-out")
    monkeypatch.setenv(compat.ALLOW_ENV, "1")
    compat._warned.discard("deepspeed")
    with pytest.warns(RuntimeWarning, match="9.1.0 is installed"):
        compat.require("deepspeed", "x")


class Counting(torch.utils.data.IterableDataset):
    """Yields 0, 1, 2, ... in each worker; its state is how many it yielded (a ShardStream in miniature)."""

    def __init__(self):
        self.n = 0

    def __iter__(self):
        while True:
            self.n += 1
            yield self.n

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, s):
        self.n = s["n"]


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_dataset_states_are_each_workers_state(workers):
    dl = StatefulDataLoader(Counting(), batch_size=1, num_workers=workers)
    it = iter(dl)
    got = [int(next(it)) for _ in range(5)]  # workers take turns: 1, 1, 2, 2, 3
    states = compat.loader_dataset_states(dl.state_dict())
    per_worker = [got[w::max(1, workers)][-1] for w in range(max(1, workers))]
    assert [s["n"] for s in states] == per_worker
    compat.loader_stop_workers(dl)


def test_loader_stop_workers_stops_them_now():
    dl = StatefulDataLoader(Counting(), batch_size=1, num_workers=2)
    assert compat.loader_live_iterator(dl) is None
    next(iter(dl))
    assert compat.loader_live_iterator(dl) is not None
    workers = compat.loader_stop_workers(dl)
    assert len(workers) == 2
    for w in workers:
        w.join(10)
        assert not w.is_alive()
    assert compat.loader_live_iterator(dl) is None
    assert int(next(iter(dl))) == 1  # a fresh pass starts new workers


def test_submitit_requeue_signal_is_the_preemption_signal(monkeypatch):
    import submitit
    env = submitit.JobEnvironment
    assert compat.submitit_requeue_signal(env) == signal.SIGUSR2  # submitit's default
    monkeypatch.setattr(env, "USR_SIG", "TERM")
    assert compat.submitit_requeue_signal(env) == signal.SIGTERM


def test_submitit_sbatch_script_has_the_resources(tmp_path):
    import submitit
    ex = submitit.SlurmExecutor(folder=str(tmp_path), python="python3")
    ex.update_parameters(nodes=4, ntasks_per_node=8, time=90, signal_delay_s=90)
    script = compat.submitit_sbatch_script(ex)
    assert script.startswith("#!/bin/bash")
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=8", "#SBATCH --time=90",
                 "#SBATCH --signal=USR2@90", f"submitit.core._submit {tmp_path}"):
        assert line in script, line


def test_numba_finalizer_report_is_dropped_and_every_other_passes(monkeypatch):
    """The hook drops a KeyError raised in numba's dispatcher `finalizer` (a function of that name
    compiled under that file name stands in for it) and hands the same error from elsewhere on."""
    import gc

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append((u.exc_type, str(u.exc_value))))
    compat.quiet_numba_finalizer()
    ns: dict = {}
    exec(compile("def finalizer():\n    raise KeyError('numba')\n", "/venv/site-packages/numba/core/dispatcher.py",
                 "exec"), ns)

    def other():
        raise KeyError("ours")

    class Collected:
        def __init__(self, fn):
            self.fn = fn

        def __del__(self):
            self.fn()

    Collected(ns["finalizer"])
    Collected(other)
    gc.collect()
    assert seen == [(KeyError, "'ours'")]
