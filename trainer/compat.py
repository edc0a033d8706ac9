"""Every use of another library's private API, in one place.

A library may change what is not its public API in any release, so each workaround below names
the library versions it was written and tested for (:data:`TESTED`, major.minor). :func:`require`
runs before a workaround is used: on another version it raises :class:`UntestedVersion` naming the
workaround and the version to pin (``requirements/constraints.txt``), unless the user set
``S5VIDEO_ALLOW_UNTESTED=1`` (then it warns once). tests/test_compat.py tests each workaround
against the installed library.

Workarounds (library: what, why):

* DeepSpeed: the universal-checkpoint converter's ``ds_to_universal.main(Namespace)`` (it has no
  function API); ``engine._config.load_universal_checkpoint`` (the engine reads it at every load,
  and only the config at ``initialize`` sets it); the model-states file names of a checkpoint tag;
  the CPU all-reduce shared-memory file name (``deepspeed/ops/csrc/cpu/comm/shm.cpp``).
* torch/torchdata ``StatefulDataLoader``: its live iterator (``_iterator``, ``_workers``,
  ``_shutdown_workers``) to stop decode workers now, and the layout of its state dict
  (``_snapshot`` / ``_worker_snapshots`` / ``dataset_state``) to read each worker's stream state.
* numba (under ffcv): its dispatcher finalizer can raise ``KeyError`` when ffcv's compiled
  pipelines are collected; Python prints that as "Exception ignored in: <finalize object>" after
  every evaluation on cached features. :func:`quiet_numba_finalizer` drops exactly that report
  (no private API: a ``sys.unraisablehook`` that matches numba's frame, others pass through).
* submitit: the job environment's requeue signal (``JobEnvironment._usr_sig``), the sbatch script
  it would write (``slurm._make_sbatch_string``) and its task entry module (``submitit.core._submit``).
"""
from __future__ import annotations

import importlib.metadata
import os
import warnings
from pathlib import Path

# library -> the major.minor versions the workarounds below were written and tested for
TESTED: dict[str, tuple[str, ...]] = {"deepspeed": ("0.19",), "torchdata": ("0.11",), "submitit": ("1.5",)}
ALLOW_ENV = "S5VIDEO_ALLOW_UNTESTED"
_warned: set[str] = set()


class UntestedVersion(RuntimeError):
    """A private-API workaround is about to run against a library version it was not tested with."""


def require(lib: str, what: str) -> None:
    """Check the installed ``lib`` against :data:`TESTED` before workaround ``what`` uses its internals.

    Raises:
        UntestedVersion: another major.minor version (and ``S5VIDEO_ALLOW_UNTESTED`` is not ``1``).
    """
    version = importlib.metadata.version(lib)
    if any(version == t or version.startswith(t + ".") for t in TESTED[lib]):
        return
    msg = (f"{what} uses {lib} internals written for {lib} {', '.join(TESTED[lib])}.x; {version} is installed. "
           f"Install the tested version (pip install -c requirements/constraints.txt {lib}), or set "
           f"{ALLOW_ENV}=1 to try anyway")
    if os.environ.get(ALLOW_ENV) != "1":
        raise UntestedVersion(msg)
    if lib not in _warned:
        _warned.add(lib)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


# ----------------------------------------------------------------------------- DeepSpeed
def ds_to_universal(state_dir: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """Convert DeepSpeed checkpoint tag ``state_dir`` into a universal checkpoint in ``out_dir`` (one
    file per parameter and optimizer state). Prints as the converter does."""
    require("deepspeed", "the universal-checkpoint conversion (elastic resume)")
    import argparse

    from deepspeed.checkpoint import ds_to_universal as converter
    args = argparse.Namespace(input_folder=str(state_dir), output_folder=str(out_dir), num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True)
    converter.main(args)


def ds_stop_universal_loads(engine) -> None:
    """After an engine loaded a universal checkpoint: its later loads (``best/``) read ordinary tags."""
    require("deepspeed", "switching universal-checkpoint loading off")
    engine._config.load_universal_checkpoint = False


def ds_model_states_files(tag_dir: str | os.PathLike) -> list[Path]:
    """The model-states files of a DeepSpeed checkpoint tag (``mp_rank_00_model_states.pt``; under
    ZeRO-3 ``zero_pp_rank_<r>_mp_rank_00_model_states.pt``), rank 0's first."""
    require("deepspeed", "reading a checkpoint's model-states file")
    return sorted(Path(tag_dir).glob("*mp_rank_00_model_states.pt"))


def ds_shm_buffer_name(rank: int, addr: str, port: str) -> str:
    """Name under /dev/shm of DeepSpeed's CPU all-reduce buffer of ``rank``:
    ``deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>``."""
    require("deepspeed", "releasing the CPU all-reduce shared-memory name")
    return f"deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank}"


# ----------------------------------------------------------------------------- StatefulDataLoader
def loader_live_iterator(dl):
    """The ``StatefulDataLoader``'s live multi-process iterator, or None (none started, or closed)."""
    require("torchdata", "stopping decode workers")
    return getattr(dl, "_iterator", None)


def loader_stop_workers(dl) -> list:
    """Ask ``dl``'s live iterator to stop its workers (its own shutdown: a sentinel to each, joined
    briefly) and forget the iterator. Returns the worker processes, some possibly still alive.
    Raises RuntimeError when a worker dies while being stopped (the loader's SIGCHLD handler)."""
    it = loader_live_iterator(dl)
    workers = list(getattr(it, "_workers", []) or [])
    try:
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()  # its own `finally` unregisters the workers and terminates those left
    finally:
        dl._iterator = None
    return workers


def loader_dataset_states(loader_state: dict) -> list[dict]:
    """The dataset state of each worker in a ``StatefulDataLoader`` state dict, by worker id; one (the
    process's own dataset) when it runs without workers."""
    require("torchdata", "reading the loader's per-worker states")
    snap = loader_state.get("_snapshot")
    if snap is None:  # num_workers=0: the rank's process is the one reader
        return [loader_state["dataset_state"]] if "dataset_state" in loader_state else []
    workers = snap["_worker_snapshots"]
    return [workers[f"worker_{i}"].get("dataset_state") or {} for i in range(len(workers))]


# ----------------------------------------------------------------------------- submitit
def submitit_requeue_signal(job_env):
    """The signal on which submitit's job checkpoints and requeues itself (its handler)."""
    require("submitit", "calling submitit's requeue handler")
    return job_env._usr_sig()


def submitit_sbatch_script(executor) -> str:
    """The sbatch script ``executor`` (a ``submitit.AutoExecutor``/``SlurmExecutor``) would submit."""
    require("submitit", "printing the sbatch script (--dry-run)")
    import sys

    from submitit.slurm.slurm import _make_sbatch_string
    return _make_sbatch_string(command=f"{sys.executable} -u -m submitit.core._submit {executor.folder}",
                               folder=executor.folder, **executor.parameters)


def quiet_numba_finalizer() -> None:
    """Install (once) a ``sys.unraisablehook`` that drops the ``KeyError`` numba's dispatcher
    finalizer (``numba/core/dispatcher.py``, ``finalizer``) raises while ffcv's compiled pipelines
    are garbage collected - harmless, the finalizer only unregisters compiled functions - and hands
    every other unraisable exception to the hook that was there before."""
    import sys

    previous = sys.unraisablehook
    if getattr(previous, "_s5video_numba", False):
        return

    def hook(unraisable):
        tb = unraisable.exc_traceback
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        code = tb.tb_frame.f_code if tb is not None else None
        if (unraisable.exc_type is KeyError and code is not None and code.co_name == "finalizer"
                and code.co_filename.replace(os.sep, "/").endswith("numba/core/dispatcher.py")):
            return
        previous(unraisable)

    hook._s5video_numba = True
    sys.unraisablehook = hook
