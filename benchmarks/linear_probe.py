"""A linear probe on the frozen encoder's features, printed beside finetuned runs: the floor a
finetuned decoder has to clear.

    python benchmarks/linear_probe.py --config configs/demo_finetune.yaml data.shards=cache/demo_shards \
        [--runs runs/demo/finetune runs/demo/finetune_vis4mer ...]

For each split the run reads (train, val, test), every video's evaluation clips (``data.eval_clip``,
as the trainer's evaluation cuts them; training videos too) go through the config's frozen encoder
(``model.encoder``, ``frame_tokens``, ``spatial_grid``); a clip's tokens (T*P, D) are mean-pooled
to (D,). A scikit-learn ``LogisticRegression`` (features standardised; C from 1e-3..1e2 chosen
on val top-1) is fitted on train; test top-1 is per video, clip probabilities summed per video as
the trainer aggregates them. Then, for each ``--runs`` directory, its ``results.json`` test top-1
(the model selected on val) and the ratio finetune / probe (>= 1.0: the finetune beats the probe).
Needs scikit-learn (``pip install -e .[bench]``). Classification only.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from s5video.data.loader import VideoLoader  # noqa: E402
from s5video.data.sources import read_manifest  # noqa: E402
from s5video.models.encoders import create_encoder  # noqa: E402
from s5video.trainer.config import load_config  # noqa: E402
from s5video.trainer.evaluate import eval_clip_spec  # noqa: E402


@torch.no_grad()
def pooled_features(cfg, split: str, encoder, device: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Mean-pooled frozen tokens of every evaluation clip of ``split``: X (N, D), y (N,), video ids."""
    d = cfg.data
    loader = VideoLoader(d.shards, split, eval_clip_spec(d), batch_size=8, image_size=d.image_size,
                         mean=encoder.mean, std=encoder.std, num_workers=min(2, d.num_workers), finite=True)
    xs, ys, vids = [], [], []
    for b in loader:
        tokens, _ = encoder(b["video"].to(device))  # (B, T*P, D)
        xs.append(tokens.float().mean(1).cpu().numpy())  # (B, D)
        ys.append(b["label"].numpy())
        vids += list(b["video_id"])
    loader.close()
    return np.concatenate(xs), np.concatenate(ys), vids


def per_video_top1(proba: np.ndarray, y: np.ndarray, vids: list[str]) -> float:
    """Top-1 over videos: clip probabilities (N, C) summed per video, argmax vs the video's label."""
    groups = defaultdict(list)
    for i, v in enumerate(vids):
        groups[v].append(i)
    hits = [proba[idx].sum(0).argmax() == y[idx[0]] for idx in groups.values()]
    return float(np.mean(hits))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--runs", nargs="*", default=[], help="finetune run directories (their results.json)")
    ap.add_argument("overrides", nargs="*", help="section.key=value")
    a = ap.parse_args(argv)
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
    from sklearn.pipeline import make_pipeline  # noqa: PLC0415
    from sklearn.preprocessing import StandardScaler  # noqa: PLC0415

    cfg = load_config(a.config, a.overrides)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    m = cfg.model
    encoder = create_encoder(m.encoder, m.encoder_weights, m.frame_tokens, m.spatial_grid).to(device).eval()
    d = cfg.data
    data = {s: pooled_features(cfg, s, encoder, device) for s in (d.train_split, d.val_split, d.test_split)}
    (Xtr, ytr, _), (Xva, yva, vva), (Xte, yte, vte) = (data[d.train_split], data[d.val_split], data[d.test_split])
    classes = read_manifest(d.shards).get("classes", [])
    best = None
    for C in (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000)).fit(Xtr, ytr)
        val = per_video_top1(clf.predict_proba(Xva), yva, vva)
        if best is None or val > best[0]:
            best = (val, C, clf)
    val, C, clf = best
    test = per_video_top1(clf.predict_proba(Xte), yte, vte)
    print(f"linear probe ({m.encoder} features mean-pooled, {d.eval_clip} clips of {d.clip_seconds:g} s, "
          f"{len(classes)} classes, {len(ytr)} train / {len(set(vva))} val / {len(set(vte))} test videos): "
          f"C={C:g}, val top-1 {val:.3f}, test top-1 {test:.3f}")
    rows = {"probe": {"C": C, "val_top1": val, "test_top1": test}}
    for run in a.runs:
        res = json.loads((Path(run) / "results.json").read_text())
        t = res["test"]["top1"]
        name = os.path.basename(os.path.normpath(run))
        print(f"{name:<28} test top-1 {t:.3f}   finetune / probe = {t / max(test, 1e-9):.2f}")
        rows[name] = {"test_top1": t, "ratio_to_probe": t / max(test, 1e-9)}
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
