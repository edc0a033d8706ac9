#!/usr/bin/env python
"""ViS4mer's Tables 3, 4 and 5 regenerated at CPU scale, each row printed next to the paper's.

* Table 3 - ViS4mer vs LST over the token sweep 60 / 1,500 / 2,940 / 11,760 (60 frames x s x s):
  training samples/s and peak memory; ``lst_full`` (the L x L matrix formed, as the paper's LST)
  where it fits this machine (``--lst-full-max``).
* Table 4 - the decoder with S4 vs self-attention, Performer and Orthoformer at 11,760 tokens
  (samples/s, memory), and top-1 on the demo shards.
* Table 5 - ViS4mer with and without pooling and channel scaling at 11,760 tokens (samples/s,
  memory), and top-1 on the demo shards.

Speed and memory: ``benchmarks/models.py`` (random tokens, a fresh process per row, fp32 on CPU,
bf16 on a GPU). Accuracy: the trainer as a user runs it (``trainer/main.py``, one rank) on frozen
EfficientNet-Lite0 features of the demo shards (8 frames x 4 x 4 tokens, width 128,
``tools/extract_features.py`` once), selected on val, top-1 on test, mean over ``--seeds``. The
demo has 6 classes (chance 16.7 %) and 21 test videos: its accuracies rank nothing at paper scale;
the paper's accuracy columns are LVU averages (content: relation, speak, scene; metadata:
director, genre, writer, year; user: like, views MSE).

Every row runs ViS4mer's block ``--block`` (default ``authors``: the public code that produced the
paper's tables; ``paper``: eq. 4) with that block's pooling (authors: avg1d, paper: max_st); the
attention baselines swap only the mixer of the same block. Table 5's "pooling" is that pooling
on or off. Sampling: the demo's centred 2-s clips (8 frames).

    python benchmarks/paper_tables.py [--tables 3 4 5] [--block authors|paper] [--width 128] [--batch 2] [--json]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.models import measure  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Paper (ViS4mer, ECCV 2022), RTX A6000, width 1024.
PAPER_T3 = {60: {"vis4mer": (12.46, 2.23), "lst": (8.85, 2.45)}, 1500: {"vis4mer": (8.27, 3.61), "lst": (6.31, 3.99)},
            2940: {"vis4mer": (6.25, 3.67), "lst": (4.47, 5.43)}, 11760: {"vis4mer": (4.95, 5.15), "lst": (1.88, 41.38)}}
PAPER_T4 = {  # LVU: relation, speak, scene (content); samples/s; GB
    "lst": ((52.38, 37.31, 62.79), 1.88, 41.38), "performer": ((50.00, 38.80, 60.46), 4.67, 5.93),
    "orthoformer": ((50.00, 39.30, 66.27), 4.85, 5.56), "vis4mer": ((57.14, 40.79, 67.44), 4.95, 5.15)}
PAPER_T5 = {  # (pooling, scaling): content, metadata, user MSE, samples/s, GB
    (False, False): (49.53, 49.26, 2.30, 2.25, 7.27), (True, False): (48.96, 49.77, 2.10, 3.98, 5.96),
    (False, True): (52.25, 48.79, 2.09, 4.12, 5.95), (True, True): (55.12, 52.72, 1.94, 4.95, 5.15)}
DEMO = ["model.width=128", "model.depth=3", "model.state_size=16", "data.image_size=128", "data.frames=8",
        "data.clip_seconds=2.0", "data.batch_size=8", "data.num_workers=1", "train.global_batch_size=0",
        "logging.progress_bar=false", "logging.every_steps=50", "run.init_from=null", "model.frame_tokens=patch"]
DEMO_ATTENTION = ["model.num_features=64", "model.num_landmarks=16"]  # m scaled to 128 tokens (paper: 11,760)


def top1(features: Path, shards: str, run: Path, steps: int, seed: int, overrides: list[str]) -> float:
    """Test top-1 (%) of one finetune on the cached features, model selected on val."""
    cmd = [sys.executable, "trainer/main.py", "--config", "configs/demo_finetune.yaml", f"run.dir={run}",
           f"data.shards={shards}", "data.backend=features", f"data.features={features}", f"train.max_steps={steps}",
           f"run.seed={seed}", f"train.eval_every_steps={steps // 4}", f"checkpoint.every_steps={steps}", *DEMO,
           *overrides]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(overrides)}: {(r.stdout + r.stderr)[-2000:]}")
    return 100 * json.loads((run / "results.json").read_text())["test"]["top1"]


def mean_top1(tmp: Path, features: Path, a, tag: str, overrides: list[str]) -> float:
    accs = [top1(features, a.shards, tmp / f"{tag}-{s}", a.steps, 1112 + s, overrides) for s in range(a.seeds)]
    return sum(accs) / len(accs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tables", nargs="+", type=int, default=[3, 4, 5], choices=[3, 4, 5])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--width", type=int, default=128, help="decoder width for speed/memory (paper: 1024)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--lst-full-max", type=int, default=2940, help="largest token count for lst_full (L x L formed)")
    ap.add_argument("--shards", default="cache/demo_shards")
    ap.add_argument("--steps", type=int, default=200, help="finetune steps per accuracy run")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--no-accuracy", action="store_true")
    ap.add_argument("--json", action="store_true", help="JSON lines only")
    ap.add_argument("--block", default="authors", choices=["authors", "paper"], help="ViS4mer block of every row")
    a = ap.parse_args()
    block_pool = {"authors": "avg1d", "paper": "max_st"}[a.block]
    out = []

    def emit(row: dict) -> None:
        out.append(row)
        if a.json:
            print(json.dumps(row), flush=True)

    def perf(model: str, tokens: int, **kw) -> dict:
        return measure(model, tokens, a.width, a.batch, a.device, a.min_seconds, **{"block": a.block, **kw})

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        features = tmp / "features"
        if not a.no_accuracy and {4, 5} & set(a.tables):
            subprocess.run([sys.executable, "tools/extract_features.py", "--config", "configs/demo_finetune.yaml",
                            "--out", str(features), f"data.shards={a.shards}", *DEMO], cwd=REPO, check=True,
                           capture_output=True)
        if 3 in a.tables:
            for tokens, paper in PAPER_T3.items():
                models = ["vis4mer", "lst"] + (["lst_full"] if tokens <= a.lst_full_max else [])
                rows = {m: perf(m, tokens) for m in models}
                for m, r in rows.items():
                    p = paper.get(m) or paper["lst"]
                    emit({"table": 3, **r, "paper_samples_per_s": p[0], "paper_gb": p[1]})
        if 4 in a.tables:
            for model, (content, sps, gb) in PAPER_T4.items():
                r = perf(model, 11760)
                acc = None if a.no_accuracy else mean_top1(tmp, features, a, model, [f"model.name={model}",
                                                                                      f"model.block={a.block}",
                                                                                      *DEMO_ATTENTION])
                emit({"table": 4, **r, "demo_top1": acc, "paper_content_acc": round(sum(content) / 3, 2),
                      "paper_samples_per_s": sps, "paper_gb": gb})
        if 5 in a.tables:
            for (pooling, scaling), (content, meta, user, sps, gb) in PAPER_T5.items():
                pool = block_pool if pooling else "none"
                r = perf("vis4mer", 11760, pool=pool, channel_scaling=scaling)
                acc = None if a.no_accuracy else mean_top1(
                    tmp, features, a, f"t5-{pool}-{scaling}",
                    ["model.name=vis4mer", f"model.block={a.block}", f"model.pool={pool}",
                     f"model.channel_scaling={str(scaling).lower()}"])
                emit({"table": 5, **r, "demo_top1": acc, "paper_content_acc": content, "paper_metadata_acc": meta,
                      "paper_user_mse": user, "paper_samples_per_s": sps, "paper_gb": gb})
    if not a.json:
        report(out, a)
    return 0


def _perf(r: dict) -> str:
    if "error" in r:
        return f"{'error: ' + r['error'][:40]:>20s}"
    return f"{r['samples_per_s']:9.2f} {r['peak_mem_mb'] / 1024:9.2f}"


def report(rows: list[dict], a) -> None:
    scale = f"block {a.block}, width {a.width}, batch {a.batch}, {a.device}"
    t3 = [r for r in rows if r["table"] == 3]
    if t3:
        print(f"\nTable 3 - samples/s and peak GB ({scale}) | paper (A6000, width 1024)")
        print(f"{'tokens':>7} {'model':<9} {'ours/s':>9} {'ours GB':>9} {'paper/s':>8} {'paper GB':>9} "
              f"{'speed vs LST':>13} {'LST mem / x':>12}")
        for r in t3:
            lst = next(x for x in t3 if x["tokens"] == r["tokens"] and x["model"] == "lst")
            ok = "error" not in r and "error" not in lst
            sp = f"{r['samples_per_s'] / lst['samples_per_s']:12.2f}x" if ok else f"{'-':>13}"
            mem = f"{lst['peak_mem_mb'] / max(r['peak_mem_mb'], 1e-3):11.2f}x" if ok else f"{'-':>12}"
            paper = f"{r['paper_samples_per_s']:8.2f} {r['paper_gb']:9.2f}" if r["model"] != "lst_full" else \
                f"{'(= LST)':>18}"
            print(f"{r['tokens']:>7} {r['model']:<9} {_perf(r)} {paper} {sp} {mem}")
    t4 = [r for r in rows if r["table"] == 4]
    if t4:
        print(f"\nTable 4 - 11,760 tokens ({scale}); demo top-1 % (mean of {a.seeds} seeds) | paper: LVU content "
              "mean, samples/s, GB")
        print(f"{'mixer':<12} {'ours/s':>9} {'ours GB':>9} {'demo top1':>10} | {'content':>8} {'paper/s':>8} {'GB':>6}")
        for r in t4:
            acc = f"{r['demo_top1']:10.1f}" if r["demo_top1"] is not None else f"{'-':>10}"
            print(f"{r['model']:<12} {_perf(r)} {acc} | {r['paper_content_acc']:8.2f} {r['paper_samples_per_s']:8.2f} "
                  f"{r['paper_gb']:6.2f}")
    t5 = [r for r in rows if r["table"] == 5]
    if t5:
        print(f"\nTable 5 - ViS4mer ablation, 11,760 tokens ({scale}) | paper: LVU content, metadata, user MSE, "
              "samples/s, GB")
        print(f"{'pool':<7} {'scaling':<8} {'ours/s':>9} {'ours GB':>9} {'demo top1':>10} | {'content':>8} "
              f"{'meta':>6} {'user':>5} {'paper/s':>8} {'GB':>6}")
        for r in t5:
            acc = f"{r['demo_top1']:10.1f}" if r["demo_top1"] is not None else f"{'-':>10}"
            print(f"{r['pool']:<7} {str(r['channel_scaling']):<8} {_perf(r)} {acc} | {r['paper_content_acc']:8.2f} "
                  f"{r['paper_metadata_acc']:6.2f} {r['paper_user_mse']:5.2f} {r['paper_samples_per_s']:8.2f} "
                  f"{r['paper_gb']:6.2f}")


if __name__ == "__main__":
    sys.exit(main())
