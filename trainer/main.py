#!/usr/bin/env python
"""s5video trainer: ``deepspeed trainer/main.py --config configs/coin.yaml [section.key=value ...]``.

Also ``torchrun --nproc_per_node N trainer/main.py ...`` and ``srun python trainer/main.py ...``.
Modes (``run.mode``): ``pretrain`` (LSMCL over S5 query/key encoders), ``finetune`` (classification,
regression, multi-label), ``eval`` (a checkpoint on a split). The frozen frame encoder runs outside
DeepSpeed and the optimizer; the decoder trains under ZeRO stage ``train.zero_stage``.
"""
from __future__ import annotations

import argparse
import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if sys.path and os.path.abspath(sys.path[0]) == os.path.join(_REPO, "trainer"):
    sys.path[0] = _REPO  # `python trainer/main.py`: import the packages, not trainer/'s modules

from s5video.trainer.config import ConfigError, load_config  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed
    p.add_argument("overrides", nargs="*", help="section.key=value")
    return p.parse_args(argv)


def make_trainer(config: str, overrides: list[str]):
    """A :class:`trainer.run.Trainer` for ``config`` + ``overrides`` (raises ConfigError first)."""
    cfg = load_config(config, overrides)
    from s5video.trainer.run import Trainer  # heavy imports after the config is known to be valid

    return Trainer(cfg, config)


def main(argv=None) -> int:
    """Returns the exit code: 0, or 2 with one line on stderr for a configuration error (found before
    the first step: a bad key or value, a missing split, weights file or run.init_from, ...)."""
    args = parse_args(argv)
    try:
        return make_trainer(args.config, args.overrides).run()
    except ConfigError as e:
        print(f"trainer/main.py: error: {e}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
