#!/usr/bin/env python
"""Training throughput of the video path (decode + frozen encoder every step) against the frozen-
feature path (cached tokens, tools/extract_features.py) on the same shards, config and model.

Runs the trainer as a user does (``trainer/main.py``, one rank) for ``--steps`` steps on each path
and reads its own metrics (``metrics.jsonl``: clips/s and data-wait % over the logged intervals
after the first, which holds start-up). Prints steps/s, clips/s, data-wait % and the ratio.

    python benchmarks/feature_path.py --shards cache/demo_shards [--steps 40] [--json]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = ["model.width=128", "model.depth=2", "model.state_size=16", "data.image_size=128", "data.frames=8",
         "data.clip_seconds=2.0", "data.batch_size=8", "data.num_workers=1", "train.global_batch_size=0",
         "logging.progress_bar=false", "logging.every_steps=5", "checkpoint.every_steps=100000",
         "train.eval_every_steps=100000", "run.init_from=null"]


def train(run: Path, shards: str, steps: int, *extra: str) -> dict:
    cmd = [sys.executable, "trainer/main.py", "--config", "configs/demo_finetune.yaml", f"run.dir={run}",
           f"data.shards={shards}", f"train.max_steps={steps}", *MODEL, *extra]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"][1:]  # the first interval holds start-up
    clips = sum(r["clips_per_s"] for r in train_rows) / len(train_rows)
    wait = sum(r["data_wait_pct"] for r in train_rows) / len(train_rows)
    return {"clips_per_s": clips, "steps_per_s": clips / 8, "data_wait_pct": wait, "wall_s": wall}


def demo_run_args(doc: str) -> argparse.Namespace:
    """The command line of the demo-finetune benchmarks: --shards, --steps, --json."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--shards", default="cache/demo_shards")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--json", action="store_true")
    return ap.parse_args()


def main() -> int:
    a = demo_run_args(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        video = train(tmp / "video", a.shards, a.steps)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "tools/extract_features.py", "--config", "configs/demo_finetune.yaml",
                        "--out", str(tmp / "features"), f"data.shards={a.shards}", *MODEL], cwd=REPO, check=True,
                       capture_output=True)
        extract_s = time.perf_counter() - t0
        feats = train(tmp / "feat", a.shards, a.steps, "data.backend=features", f"data.features={tmp / 'features'}")
    rows = [("video (decode + encoder)", video), ("frozen features", feats)]
    if a.json:
        for name, r in rows:
            print(json.dumps({"path": name, **r}))
        print(json.dumps({"ratio_steps_per_s": feats["steps_per_s"] / video["steps_per_s"], "extract_s": extract_s}))
        return 0
    print(f"{'path':26s} {'steps/s':>8s} {'clips/s':>8s} {'data-wait %':>12s}")
    for name, r in rows:
        print(f"{name:26s} {r['steps_per_s']:8.2f} {r['clips_per_s']:8.1f} {r['data_wait_pct']:12.1f}")
    print(f"feature path / video path: {feats['steps_per_s'] / video['steps_per_s']:.1f}x steps/s "
          f"(one-off extraction of train/val/test: {extract_s:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
