#!/usr/bin/env python
"""Summary of a pipeline's runs: ``summary.json``, a printed table and comparison plots.

    python launchers/summary.py runs/demo/pretrain runs/demo/finetune ... [--out runs/demo]

Reads each run directory's ``results.json`` and ``config.yaml`` (written by the trainer). For every
finetune: test top-1 (the model selected on val), chance level (1 / classes) and its multiple of
chance. Where the runs allow, it checks the papers' two claims at this scale (reference.md):

* ``lsmcl_pretraining``: the same model finetuned from the LSMCL checkpoint vs from scratch;
* ``token_selection``: S5 vs plain ViS4mer, both from scratch (same data, steps, width, block and
  pooling: a comparison at different pooling would mix pooling with selection, so none is made).

Writes ``<out>/summary.json``, ``<out>/curves.png`` (all stages' losses and val top-1) and each
finetune's confusion matrix as ``<out>/confusion_<stage>.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if sys.path and os.path.abspath(sys.path[0]) == os.path.join(_REPO, "launchers"):
    sys.path[0] = _REPO

import yaml  # noqa: E402


def read_run(run_dir: str | Path) -> dict:
    """One stage's record from its run directory (results.json + the resolved config.yaml).

    Raises:
        FileNotFoundError: the run has no results.json (it did not finish).
    """
    d = Path(run_dir)
    res = json.loads((d / "results.json").read_text())
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    m = cfg["model"]
    block = m.get("block", "paper")  # runs from before model.block ran the paper's block
    pool = m.get("pool") or ("avg1d" if m["name"].startswith("s5") else {"authors": "avg1d"}.get(block, "max_st"))
    rec = {"run_dir": str(d), "mode": res["mode"], "model": cfg["model"]["name"], "block": block, "pool": pool,
           "keep_ratio": cfg["model"]["keep_ratio"] if cfg["model"]["name"].startswith("s5") else 1.0,
           "init_from": cfg["run"].get("init_from"), "steps": res["steps"], "train": res.get("train", {})}
    if res["mode"] in ("finetune", "eval") and res.get("test"):
        classes = res.get("classes") or []
        rec.update(test=res["test"], val=res.get("val"), selected_step=(res.get("selected") or {}).get("step"),
                   classes=classes)
        if "top1" in res["test"] and classes:
            rec["chance_top1"] = 1.0 / len(classes)
            rec["top1_x_chance"] = res["test"]["top1"] / rec["chance_top1"]
        rec["test_confusion"] = res.get("test_confusion")
    return rec


def _compare(a: dict, b: dict, what: str) -> dict:
    ta, tb = a["test"]["top1"], b["test"]["top1"]
    return {"claim": what, "with": a["name"], "without": b["name"], "test_top1_with": ta, "test_top1_without": tb,
            "delta": ta - tb, "holds_here": ta > tb, "test_videos": a["test"].get("videos")}


def summarize(stages: dict[str, str | Path]) -> dict:
    """``{stage name: run dir}`` -> the summary dict (see module docstring)."""
    runs = {name: {"name": name, **read_run(d)} for name, d in stages.items()}
    fts = [r for r in runs.values() if "top1" in (r.get("test") or {})]
    claims = {}
    for r in fts:
        for o in fts:
            same = r["model"] == o["model"] and r["steps"] == o["steps"]
            if same and r["init_from"] and not o["init_from"]:
                claims["lsmcl_pretraining"] = _compare(r, o, "LSMCL pretraining improves the finetuned model")
            if (r["model"].startswith("s5") and o["model"].startswith("vis4mer") and not r["init_from"]
                    and not o["init_from"] and r["steps"] == o["steps"]):
                if (r["block"], r["pool"]) == (o["block"], o["pool"]):
                    claims["token_selection"] = _compare(r, o, "S5 token selection beats plain ViS4mer")
                else:
                    claims["token_selection"] = {
                        "claim": "S5 token selection beats plain ViS4mer", "with": r["name"], "without": o["name"],
                        "not_compared": f"block/pooling differ: {r['block']}/{r['pool']} vs {o['block']}/{o['pool']}"}
    return {"stages": runs, "claims": claims}


def table(summary: dict) -> str:
    """The summary as a fixed-width text table (one row per stage), then the claims."""
    rows = [("stage", "model", "init", "steps", "train loss", "val top-1 (step)", "test top-1", "chance", "x chance")]
    for name, r in summary["stages"].items():
        tr = r.get("train") or {}
        loss = f"{tr['first_loss']:.2f} -> {tr['final_loss']:.2f}" if tr else "-"
        init = "LSMCL" if r["init_from"] else ("-" if r["mode"] == "pretrain" else "scratch")
        model = r["model"] + (f" (keep {r['keep_ratio']:g})" if r["model"].startswith("s5") else "")
        if "top1" in (r.get("test") or {}):
            val = f"{(r.get('val') or {}).get('top1', float('nan')):.3f} ({r.get('selected_step')})"
            rows.append((name, model, init, str(r["steps"]), loss, val, f"{r['test']['top1']:.3f}",
                         f"{r['chance_top1']:.3f}", f"{r['top1_x_chance']:.1f}x"))
        else:
            rows.append((name, model, init, str(r["steps"]), loss + (" (InfoNCE)" if r["mode"] == "pretrain" else ""),
                         "-", "-", "-", "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for name, r in summary["stages"].items():  # captioners: their own metrics, one line each
        t = r.get("test") or {}
        if "bleu4" in t:
            lines.append(f"{name} ({r['model']}, {r['steps']} steps): test BLEU-1 {t['bleu1']:.3f}, BLEU-4 "
                         f"{t['bleu4']:.3f}, ROUGE-1 F {t['rouge1_f']:.3f}, ROUGE-2 F {t['rouge2_f']:.3f} "
                         f"({t.get('videos')} test videos)")
    for c in summary["claims"].values():
        if "not_compared" in c:
            lines.append(f"{c['claim']}: not compared ({c['not_compared']})")
            continue
        lines.append(f"{c['claim']}: {c['with']} {c['test_top1_with']:.3f} vs {c['without']} "
                     f"{c['test_top1_without']:.3f} -> {'holds' if c['holds_here'] else 'does NOT hold'} here "
                     f"({c['test_videos']} test videos)")
    return "\n".join(lines)


def write(summary: dict, out: str | Path) -> Path:
    """Write summary.json, curves.png and confusion_<stage>.png into ``out``; returns summary.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "summary.json"
    path.write_text(json.dumps(summary, indent=1))
    from s5video.trainer.logs import plot_confusion
    for name, r in summary["stages"].items():
        if r.get("test_confusion"):
            plot_confusion(r["test_confusion"], r["classes"], out / f"confusion_{name}.png",
                           f"{name}: {r['model']}, test top-1 {r['test']['top1']:.2f}")
    _plot_stages(summary, out / "curves.png")
    return path


def _plot_stages(summary: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, r in summary["stages"].items():
        rows = [json.loads(x) for x in (Path(r["run_dir"]) / "metrics.jsonl").read_text().splitlines() if x.strip()]
        train = [(x["step"], x["loss"]) for x in rows if x["split"] == "train"]
        val = [(x["step"], x["top1"]) for x in rows if x["split"] == "val" and "top1" in x]
        ax = axes[0] if r["mode"] == "pretrain" else axes[1]
        if train:
            ax.plot(*zip(*train), label=name)
        if val:
            axes[2].plot(*zip(*val), marker="o", label=name)
    axes[0].set(title="LSMCL pretraining (InfoNCE)", xlabel="step", ylabel="loss")
    axes[1].set(title="finetune train loss", xlabel="step", ylabel="loss", yscale="log")
    axes[2].set(title="val top-1", xlabel="step", ylim=(0, 1.02))
    chance = [r["chance_top1"] for r in summary["stages"].values() if "chance_top1" in r]
    if chance:
        axes[2].axhline(chance[0], color="grey", linestyle="--", label="chance")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run directories (stage name = directory name)")
    p.add_argument("--out", default=None, help="output directory (default: the runs' common parent)")
    args = p.parse_args(argv)
    stages = {Path(d).name: d for d in args.runs}
    out = args.out or os.path.commonpath([str(Path(d).resolve().parent) for d in args.runs])
    summary = summarize(stages)
    path = write(summary, out)
    print(table(summary))
    print(f"summary: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
