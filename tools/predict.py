#!/usr/bin/env python
"""What is in these videos? Top-5 classes with probabilities (and a caption) from exported models.

    python tools/predict.py --model model.safetensors VIDEO [VIDEO ...] [--stride 1.0] [--json]
        [--captioner caption.safetensors]

Each video is cut into windows of the training clip length (``data.clip_seconds``, ``data.frames``
frames) every ``--stride`` seconds (default: the clip length, no overlap; a shorter stride
overlaps, as seed 004's sliding windows do), preprocessed as in evaluation (short side resized,
centre crop, the encoder's normalisation), and the window scores are averaged: softmax for
classification (top-5), sigmoid for multi-label (every class above ``--threshold``), the mean for
regression. A captioning export (seed 004's GPT-2 head; as ``--model`` or beside a classifier as
``--captioner``) captions each window; the video's caption is its middle window's. Any
container/codec PyAV decodes. A file that cannot be read is one line on stderr; the other videos
are still answered (exit code 1 if any failed).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import av  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from data.clips import ClipSpec, plan_clips, spatial_transform  # noqa: E402
from data.cpu import decode_video  # noqa: E402
from models.exported import ExportedModel, load_exported  # noqa: E402


def probe(data: bytes) -> tuple[int, float]:
    """(frames, fps) of the first video stream; frames counted from the packets when the container
    does not say. Raises ValueError for a file without a decodable video stream."""
    try:
        with av.open(io.BytesIO(data)) as c:
            if not c.streams.video:
                raise ValueError("no video stream")
            s = c.streams.video[0]
            fps = float(s.average_rate or s.guessed_rate or 0)
            n = s.frames or sum(1 for p in c.demux(s) if p.size)
    except av.error.FFmpegError as e:
        raise ValueError(f"not a readable video ({e.__class__.__name__}: {e})") from None
    if not fps or not n:
        raise ValueError("no frames")
    return n, fps


@torch.no_grad()
def predict_video(model: ExportedModel, data: bytes, stride: float | None = None, batch_size: int = 8) -> dict:
    """Scores of one video (bytes): ``{"duration_s", "windows": [{"start_s", "end_s", "scores"}],
    "scores": (C,) list}``; scores are probabilities (classification: softmax, multi-label: sigmoid)
    or the regressed value. A captioner gives ``{"duration_s", "windows": [{"start_s", "end_s",
    "caption"}], "caption"}`` instead. Raises ValueError for an undecodable file."""
    d = model.config["data"]
    n, fps = probe(data)
    spec = ClipSpec(mode="windows", frames=d["frames"], seconds=d["clip_seconds"], stride=stride or d["clip_seconds"])
    plans = plan_clips(spec, n, fps, np.random.default_rng(0))  # windows mode draws nothing at random
    wanted = sorted({int(i) for p in plans for i in p["video"][0]})
    try:
        frames = decode_video(data, wanted)  # (F, H, W, 3) uint8, only the wanted frames converted
    except (ValueError, av.error.FFmpegError) as e:
        raise ValueError(f"decoding failed: {e}") from None
    row = {f: i for i, f in enumerate(wanted)}
    clips = [spatial_transform(torch.from_numpy(frames[[row[int(i)] for i in p["video"][0]]]), d["image_size"],
                               model.encoder.mean, model.encoder.std, train=False, rng=None) for p in plans]
    device = next(model.decoder.parameters()).device
    if model.task == "captioning":
        caps = [c for i in range(0, len(clips), batch_size) for c in model.caption(torch.stack(clips[i:i + batch_size]).to(device))]
        return {"duration_s": n / fps, "caption": caps[(len(caps) - 1) // 2],
                "windows": [{"start_s": round(p["video"][1][0], 3), "end_s": round(p["video"][1][1], 3), "caption": c}
                            for p, c in zip(plans, caps)]}
    outs = torch.cat([model(torch.stack(clips[i:i + batch_size]).to(device)).float().cpu()
                      for i in range(0, len(clips), batch_size)])  # (W, C)
    probs = {"classification": lambda o: o.softmax(-1), "multilabel": torch.sigmoid}.get(model.task, lambda o: o)(outs)
    return {"duration_s": n / fps,
            "windows": [{"start_s": round(p["video"][1][0], 3), "end_s": round(p["video"][1][1], 3),
                         "scores": s.tolist()} for p, s in zip(plans, probs)],
            "scores": probs.mean(0).tolist()}


def summary(model: ExportedModel, scores: list[float], k: int = 5, threshold: float = 0.5) -> list[dict]:
    """The answer: top-k classes (classification), classes above ``threshold`` (multi-label), the value."""
    names = model.classes or [str(i) for i in range(len(scores))]
    s = torch.tensor(scores)
    if model.task == "regression":
        return [{"value": float(s[0])}]
    if model.task == "multilabel":
        idx = [int(i) for i in s.argsort(descending=True) if s[i] >= threshold]
    else:
        idx = s.topk(min(k, len(s))).indices.tolist()
    return [{"class": names[i], "prob": round(float(s[i]), 4)} for i in idx]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("videos", nargs="+")
    ap.add_argument("--model", required=True, help="a tools/export.py output (.safetensors)")
    ap.add_argument("--captioner", default=None, help="a captioning export: adds a caption to each answer")
    ap.add_argument("--stride", type=float, default=None, help="seconds between windows (default: the clip length)")
    ap.add_argument("--threshold", type=float, default=0.5, help="multi-label: report classes at or above this")
    ap.add_argument("--encoder-weights", default=None, help="local encoder checkpoint (ViT) if not the config's")
    ap.add_argument("--json", action="store_true", help="one JSON object per video")
    a = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model = load_exported(a.model, a.encoder_weights, device)
        captioner = load_exported(a.captioner, None, device) if a.captioner else None
    except (OSError, ValueError) as e:
        ap.exit(2, f"predict.py: error: --model/--captioner: {e}\n")
    if captioner is not None and captioner.task != "captioning":
        ap.exit(2, f"predict.py: error: --captioner: {a.captioner} is a {captioner.task} model, not a captioner\n")
    failed = 0
    for path in a.videos:
        try:
            out = answer_video(model, captioner, path, a.stride, a.threshold)
        except (OSError, ValueError) as e:
            failed += 1
            print(f"predict.py: {path}: {e}", file=sys.stderr, flush=True)
            if a.json:
                print(json.dumps({"video": path, "error": str(e)}), flush=True)
            continue
        if a.json:
            print(json.dumps({"video": path, **out}), flush=True)
            continue
        w = out["windows"]
        print(f"{path}  ({out['duration_s']:.1f} s, {len(w)} window{'s' * (len(w) != 1)} of "
              f"{model.config['data']['clip_seconds']:g} s)")
        for i, r in enumerate(out.get("answer", []), 1):
            print(f"  {i}. {r['class']:<24s} {r['prob']:.3f}" if "class" in r else f"  value {r['value']:.4f}")
        if "caption" in out:
            print(f"  caption: {out['caption']}")
    return 1 if failed else 0


def answer_video(model: ExportedModel, captioner: ExportedModel | None, path: str, stride: float | None = None,
                 threshold: float = 0.5) -> dict:
    """The full answer for one video file, as ``--json`` prints it (also what tools/app.py shows):
    ``{"task", "duration_s", "windows", "scores", "answer"}`` plus ``"caption"`` (and a caption per
    window) from a captioner. Raises OSError / ValueError for an unreadable file."""
    with open(path, "rb") as f:
        data = f.read()
    out = {"task": model.task, **predict_video(model, data, stride)}
    if model.task != "captioning":
        out["answer"] = summary(model, out["scores"], threshold=threshold)
    if captioner is not None:
        cap = predict_video(captioner, data, stride)
        out["caption"] = cap["caption"]
        if [w["start_s"] for w in cap["windows"]] == [w["start_s"] for w in out["windows"]]:
            for w, c in zip(out["windows"], cap["windows"]):
                w["caption"] = c["caption"]
        else:  # the captioner's own clip length: its own windows
            out["caption_windows"] = cap["windows"]
    return out


if __name__ == "__main__":
    sys.exit(main())
