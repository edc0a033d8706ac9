"""What a user reads: one console line per interval, ``metrics.jsonl``, TensorBoard scalars, a PNG
of the curves at the end. Rank 0 writes; other ranks' loggers are silent."""
from __future__ import annotations

import json
import os
from pathlib import Path


class MetricsLogger:
    """``log(step, split, **metrics)`` appends one JSON object per call to ``run.dir/metrics.jsonl``
    (keys ``step``, ``split`` and the metrics) and mirrors the numbers to TensorBoard."""

    def __init__(self, run_dir: str, enabled: bool, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))
            except ImportError:
                self.tb = None

    def log(self, step: int, split: str, **metrics) -> None:
        if not self.enabled:
            return
        row = {"step": step, "split": split, **metrics}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class SampleKeyLog:
    """Data provenance: ``write(step, batch)`` appends ``{"step", "keys", "passes"}`` (the optimizer
    step the micro-batch belongs to, 1-based; its sample keys; the pass over the shards each was read
    in, when the loader says) to ``run.dir/samples-rank<r>.jsonl`` (one file per rank; a killed
    run's rows after its last checkpoint stay, the resumed run's follow)."""

    def __init__(self, run_dir: str, rank: int, enabled: bool):
        self.f = None
        if enabled:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            self.f = open(Path(run_dir) / f"samples-rank{rank}.jsonl", "a")

    def write(self, step: int, batch: dict) -> None:
        if self.f is not None:
            passes = batch.get("pass")
            self.f.write(json.dumps({"step": step, "keys": list(batch["video_id"]),
                                     "passes": None if passes is None else [int(p) for p in passes]}) + "\n")
            self.f.flush()

    def close(self) -> None:
        if self.f is not None:
            self.f.close()


def console_line(step: int, max_steps: int, m: dict) -> str:
    return (f"step {step}/{max_steps} | loss {m['loss']:.4f} | lr {m['lr']:.2e} | grad-norm {m['grad_norm']:.3f} | "
            f"{m['clips_per_s']:.1f} clips/s | data-wait {m['data_wait_pct']:.0f}% | peak mem {m['peak_mem_gb']:.2f} GB")


def plot_curves(run_dir: str) -> Path | None:
    """PNG of the loss (train, val) and the evaluation metrics over steps from metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for split in sorted({r["split"] for r in rows}):
        pts = [(r["step"], r["loss"]) for r in rows if r["split"] == split and r.get("loss") is not None]
        if pts:
            axes[0].plot(*zip(*pts), label=split, marker="." if split != "train" else None)
        for key in ("top1", "mse", "mAP"):
            pts = [(r["step"], r[key]) for r in rows if r["split"] == split and key in r]
            if pts:
                axes[1].plot(*zip(*pts), label=f"{split} {key}", marker="o")
    axes[0].set(xlabel="step", ylabel="loss", title="loss")
    axes[1].set(xlabel="step", title="evaluation")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    out = Path(run_dir) / "curves.png"
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_confusion(matrix: list[list[int]], classes: list[str], out: str | Path, title: str = "",
                   annotate_max: int = 30) -> Path:
    """PNG of a (C, C) confusion matrix: rows = true class, columns = predicted. Counts are written in
    the cells and classes named on the axes up to ``annotate_max`` classes; beyond that (COIN's 180,
    Charades' 157) it is a heat map of at most 12 x 12 inches, drawn in about a second."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = len(matrix)
    small = c <= annotate_max
    names = list(classes) if len(classes) == c else [str(i) for i in range(c)]
    side = min(12.0, 1.0 + 0.7 * c) if small else 12.0
    fig, ax = plt.subplots(figsize=(side, side * 0.85 if small else side))
    im = ax.imshow(matrix, cmap="Blues", interpolation="nearest")
    if small:
        peak = max(map(max, matrix)) if c else 0
        for i in range(c):
            for j in range(c):
                ax.text(j, i, str(matrix[i][j]), ha="center", va="center",
                        color="white" if matrix[i][j] > peak / 2 else "black")
        ax.set_xticks(range(c), names, rotation=45, ha="right")
        ax.set_yticks(range(c), names)
    else:
        fig.colorbar(im, ax=ax, shrink=0.8, label="videos")
    ax.set(xlabel="predicted" + ("" if small else " class id"), ylabel="true" + ("" if small else " class id"),
           title=title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)
