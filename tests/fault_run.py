"""The trainer with one injected fault, for tests/test_reliability.py (run it under torchrun):

    python tests/fault_run.py FAULT --config FILE [section.key=value ...]

FAULT is ``nan@STEP:RANK[:MICRO]`` (the loss of micro-batch MICRO, default 0, of 0-based step STEP on
rank RANK becomes NaN, once), ``drop@STEP:N`` (every rank reads and drops N micro-batches before
step STEP, once: the data a discarded step consumed, for a reference run) or
``crash-in-save@STEP`` (every rank dies with exit code 17 in the middle of writing the checkpoint of
step STEP: after DeepSpeed wrote the engine state, before the rank files and meta.json).
The faults are monkeypatches of this process only; the trainer code is unchanged.
"""
from __future__ import annotations

import os
import sys

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import s5video.trainer.checkpoint  # noqa: E402
from s5video.trainer import run  # noqa: E402
from s5video.trainer.main import main  # noqa: E402

def install(fault: str) -> None:
    """Monkeypatch the trainer of this process with ``fault`` (see the module docstring)."""
    kind, at = fault.split("@")
    if kind == "nan":
        nan_step, nan_rank, nan_micro = (list(map(int, at.split(":"))) + [0])[:3]
        forward_loss = run.Trainer.forward_loss
        calls, fired = [], []

        def poisoned(self, batch, step):  # once: a skipped step keeps its number, the next batch is clean
            loss = forward_loss(self, batch, step)
            if (step, self.rank) == (nan_step, nan_rank) and not fired:
                calls.append(step)
                if len(calls) == nan_micro + 1:
                    fired.append(step)
                    return loss * float("nan")
            return loss

        run.Trainer.forward_loss = poisoned
    elif kind == "drop":
        drop_step, n = map(int, at.split(":"))
        train_step = run.Trainer.train_step
        dropped = []

        def dropping(self, step, window):
            if step == drop_step and not dropped:
                dropped.extend(self.next_batch()["video_id"] for _ in range(n))
            return train_step(self, step, window)

        run.Trainer.train_step = dropping
    elif kind == "crash-in-save":
        marker = f".tmp-step{int(at):08d}"
        save = torch.save

        def crashing_save(obj, f, *a, **kw):
            if marker in str(f) and os.path.basename(str(f)).startswith("rank"):
                print(f"fault: crashing while writing {f}", flush=True)
                os._exit(17)
            return save(obj, f, *a, **kw)

        s5video.trainer.checkpoint.torch.save = crashing_save  # the same torch module object: patches torch.save
    else:
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":  # guarded: decode workers re-import the main module
    install(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
