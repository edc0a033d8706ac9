#!/usr/bin/env python
"""Export a run's selected model to one safetensors file (weights, resolved config, class names).

    python tools/export.py RUN_DIR --out model.safetensors [--checkpoint best|latest|DIR]

``best`` (the default for a finished finetune): the weights selected on validation, the ones its
test metrics were computed with (results.json: selected.tag). ``latest``: the last complete step
checkpoint (a pretraining run exports its query encoder). Any ZeRO stage: DeepSpeed's
``zero_to_fp32`` gathers the shards in this process, no GPU or process group needed. Load with
``models.exported.load_exported`` or use ``tools/predict.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout: import s5video from it
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import yaml  # noqa: E402

from s5video.models.factory import model_weights  # noqa: E402
from s5video.models.exported import save_exported  # noqa: E402
from s5video.trainer.checkpoint import complete_checkpoints, consolidated_weights  # noqa: E402


def select(run: Path, which: str) -> tuple[Path, str, dict]:
    """(DeepSpeed root, tag, description) of the checkpoint to export. Raises FileNotFoundError."""
    results = json.loads((run / "results.json").read_text()) if (run / "results.json").exists() else {}
    selected = results.get("selected") or {}
    if which == "best":
        if not selected.get("tag"):
            raise FileNotFoundError(f"{run}: no model selected on validation (no results.json of a finished "
                                    "finetune); use --checkpoint latest")
        return run / "best", selected["tag"], {"selected_on": "val", "step": str(selected["step"])}
    if which == "latest":
        found = complete_checkpoints(run)
        if not found:
            raise FileNotFoundError(f"{run}: no complete checkpoint under {run / 'checkpoints'}")
        step = json.loads((found[-1] / "meta.json").read_text())["step"]
        return found[-1], "state", {"selected_on": "latest", "step": str(step)}
    p = Path(which)
    if not (p / "meta.json").exists():
        raise FileNotFoundError(f"--checkpoint: {p} is not a complete checkpoint (no meta.json)")
    return p, "state", {"selected_on": str(p), "step": str(json.loads((p / "meta.json").read_text())["step"])}


def class_names(run: Path, config: dict) -> list[str]:
    results = json.loads((run / "results.json").read_text()) if (run / "results.json").exists() else {}
    if results.get("classes"):
        return list(results["classes"])
    try:
        from s5video.data.sources import read_manifest
        return list(read_manifest(config["data"]["shards"]).get("classes") or [])
    except (OSError, ValueError):
        return []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--out", required=True, help="output .safetensors file")
    ap.add_argument("--checkpoint", default=None, help="best | latest | a checkpoint directory "
                    "(default: best for a finished finetune, else latest)")
    a = ap.parse_args(argv)
    run = Path(a.run_dir)
    if not (run / "config.yaml").exists():
        ap.exit(2, f"export.py: error: {run} is not a run directory (no config.yaml)\n")
    config = yaml.safe_load((run / "config.yaml").read_text())
    which = a.checkpoint or ("best" if config["run"]["mode"] in ("finetune", "eval") and (run / "results.json").exists()
                             else "latest")
    try:
        root, tag, info = select(run, which)
    except FileNotFoundError as e:
        ap.exit(2, f"export.py: error: {e}\n")
    weights = model_weights(consolidated_weights(root, tag))  # an LSMCL pretraining: its query encoder
    classes = class_names(run, config)
    save_exported(a.out, weights, config, classes, source=str(root / tag), **info)
    n = sum(v.numel() for v in weights.values())
    print(f"{a.out}: {config['model']['name']}, {n:,} parameters ({len(weights)} tensors) from {root / tag} "
          f"(step {info['step']}, {info['selected_on']}), {len(classes)} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
