"""One side of the elastic-resume engine test (tests/test_trainer.py), run under torchrun:

    python -m torch.distributed.run --nproc_per_node N tests/elastic_engine.py ROOT train|resume

For each ZeRO stage 1, 2, 3 (``ROOT/zero<stage>``): ``train`` builds the trainer's engine
(:func:`trainer.run.make_engine`) around the demo config's tiny S5, takes 2 AdamW steps on seeded
random tokens and saves a checkpoint (:meth:`trainer.checkpoint.Checkpointer.save`); ``resume``
loads the run's latest checkpoint exactly as the trainer does on this world size (converting it to
a universal checkpoint when the world size differs) and saves it again, unchanged, as the next
step's checkpoint. The test compares the two checkpoints.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from s5video.models.factory import build_model  # noqa: E402
from tests.helpers import TINY  # noqa: E402
from s5video.trainer.checkpoint import Checkpointer, complete_checkpoints  # noqa: E402
from s5video.trainer.config import load_config  # noqa: E402
from s5video.trainer.distributed import init_distributed  # noqa: E402
from s5video.trainer.optim import TrainState  # noqa: E402
from s5video.trainer.run import make_engine  # noqa: E402
from s5video.trainer.schedule import Schedule  # noqa: E402

IN_DIM, TOKENS, GRID = 64, 16, (4, 2, 2)


def main(root: Path, mode: str) -> None:
    info = init_distributed()
    for stage in (1, 2, 3):
        run = root / f"zero{stage}"
        cfg = load_config(REPO / "configs/demo_finetune.yaml", [*TINY, f"train.zero_stage={stage}", f"run.dir={run}"])
        torch.manual_seed(0)  # the same initial weights on every rank
        model = build_model(cfg.model, IN_DIM, 5)
        sched = Schedule(max_steps=10, steps_per_epoch=10, global_batch=4 * info.world, grad_accum=1, eval_every=10,
                         checkpoint_every=10)
        checkpointer = Checkpointer(run, info.rank, info.world, {"world": info.world}, keep_last=10)
        point = checkpointer.find(str(complete_checkpoints(run)[-1]), stage) if mode == "resume" else None
        engine, _ = make_engine(model, cfg, sched, universal=point is not None and point.tag == "universal")
        step, state = 0, TrainState()
        if point is not None:
            step = checkpointer.load(engine, point, {"train_state": state})
        else:
            g = torch.Generator().manual_seed(100 + info.rank)
            for step in range(1, 3):
                x = torch.randn(4, TOKENS, IN_DIM, generator=g)
                y = torch.randint(0, 5, (4,), generator=g)
                loss = torch.nn.functional.cross_entropy(engine(x, grid=GRID), y)
                engine.backward(loss)
                engine.step()
        checkpointer.save(engine, step + 1 if point is not None else step, {"train_state": state})
        engine.destroy()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
