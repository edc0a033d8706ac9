#!/usr/bin/env python
"""What is in these videos? Top-5 classes with probabilities (and a caption) from exported models.

    python tools/predict.py --model model.safetensors VIDEO [VIDEO ...] [--stride 1.0] [--json]
        [--captioner caption.safetensors]

A model trained with ``data.sampling: segments`` (the ViS4mer authors' Breakfast / COIN protocol)
sees each video once, as its evaluation did: ``data.frames`` segments of ``data.segment_seconds``
uniformly spaced over the whole video (:func:`data.clips.segment_indices`); the video is decoded
twice (once to count its frames, once to keep only those T), so memory stays bounded. Any other
model: each video is cut into windows of the training clip length (``data.clip_seconds``, ``data.frames``
frames) every ``--stride`` seconds (default: the clip length, no overlap; a shorter stride
overlaps, as seed 004's sliding windows do), preprocessed as in evaluation (short side resized,
centre crop, the encoder's normalisation), and the window scores are averaged: softmax for
classification (top-5), sigmoid for multi-label (every class above ``--threshold``), the mean for
regression. A captioning export (seed 004's GPT-2 head; as ``--model`` or beside a classifier as
``--captioner``) captions each window; the video's caption is its middle window's. Any
container/codec PyAV decodes, with make_shards.py's tolerance: the decoded frames are trusted over
the header's frame count, and packets that do not decode are skipped (a warning in the answer).
Videos are decoded and scored window by window, so memory does not grow with their length. An
image, a file that cannot be read, or one with no video stream is one line on stderr; the other
videos are still answered (exit code 1 if any failed). A missing or truncated model file: exit 2.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
from typing import Iterator

if __package__ in (None, ""):  # run as a script from a checkout: import s5video from it
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import av  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from s5video.data.clips import num_segments, segment_frames, segment_indices, spatial_transform  # noqa: E402
from s5video.models.exported import ExportedModel, load_exported  # noqa: E402


# containers that hold pictures, not video (FFmpeg's image demuxers)
IMAGE_FORMATS = ("image2", "png_pipe", "jpeg_pipe", "bmp_pipe", "webp_pipe", "tiff_pipe", "gif_pipe", "pgm_pipe",
                 "ppm_pipe", "qoi_pipe", "svg_pipe", "jpegxl_pipe", "j2k_pipe", "dpx_pipe", "exr_pipe", "psd_pipe")


def decoded_frames(source: str | bytes, counts: dict) -> Iterator[av.VideoFrame]:
    """Every frame of the first video stream that decodes, in order, one at a time (the frame
    index is its position in this sequence: decoded frames are trusted over the header's count).
    A packet that does not decode is skipped and counted (``counts["bad_packets"]``), as ffmpeg
    (and so make_shards.py) skips it. ``counts["fps"]`` is set before the first frame.

    Raises:
        ValueError: not a readable media file, no video stream, or an image.
    """
    try:
        c = av.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except av.error.FFmpegError as e:
        raise ValueError(f"not a readable video ({e.__class__.__name__}: {e})") from None
    with c:
        if not c.streams.video:
            kinds = sorted({s.type for s in c.streams}) or ["none"]
            raise ValueError(f"no video stream (streams: {', '.join(kinds)})")
        s = c.streams.video[0]
        if c.format.name in IMAGE_FORMATS:
            raise ValueError(f"an image ({s.codec_context.name}), not a video")
        fps = float(s.average_rate or s.guessed_rate or 0)
        if not fps:
            raise ValueError("no frame rate in the video stream")
        counts.update(fps=fps, bad_packets=0)
        s.thread_type = "AUTO"
        for pkt in c.demux(s):
            try:
                frames = pkt.decode()
            except av.error.FFmpegError:
                counts["bad_packets"] += 1
                continue
            yield from frames


@torch.no_grad()
def check_frame_count(n: int) -> None:
    """Raises ValueError for a decode of ``n`` frames that is no video: none, or a single one (an image)."""
    if n == 0:
        raise ValueError("no frame decoded")
    if n == 1:
        raise ValueError("a single frame: an image, not a video")


def predict_segments(model: ExportedModel, source: str | bytes) -> dict:
    """Scores of one video for a model trained on ``data.sampling: segments``: one clip of
    ``data.frames`` segment centre frames uniformly spaced over the whole decoded video, as its
    evaluation cut it. Returns :func:`predict_video`'s dict with one window [0, duration].

    Raises:
        ValueError: as :func:`predict_video`.
    """
    d = model.config["data"]
    counts: dict = {}
    try:
        n = sum(1 for _ in decoded_frames(source, counts))  # pass 1: the decoded frame count
    except av.error.FFmpegError as e:
        raise ValueError(f"decoding failed: {e}") from None
    check_frame_count(n)
    fps, T, seg_s = counts["fps"], int(d["frames"]), float(d["segment_seconds"])
    idx = segment_frames(segment_indices(num_segments(n / fps, seg_s), T, train=False), seg_s, fps, n)  # (T,)
    kept: dict[int, torch.Tensor] = {}
    for i, frame in enumerate(decoded_frames(source, {})):  # pass 2: only the T frames the clip uses
        if i in idx and i not in kept:
            rgb = torch.from_numpy(frame.to_ndarray(format="rgb24"))[None]  # (1, H, W, 3) uint8
            kept[i] = spatial_transform(rgb, d["image_size"], model.encoder.mean, model.encoder.std, train=False,
                                        rng=None)[0]
        if i >= idx.max():
            break
    clip = torch.stack([kept[int(i)] for i in idx])[None].to(next(model.decoder.parameters()).device)  # (1, T, 3, S, S)
    out: dict = {"duration_s": n / fps}
    if counts.get("bad_packets"):
        out["warnings"] = [f"{counts['bad_packets']} packet(s) did not decode and were skipped ({n} frames decoded)"]
    window = {"start_s": 0.0, "end_s": round(n / fps, 3), "segments": T}
    if model.task == "captioning":
        cap = model.caption(clip)[0]
        return {**out, "caption": cap, "windows": [{**window, "caption": cap}]}
    o = model(clip).float().cpu()  # (1, C)
    probs = {"classification": lambda o: o.softmax(-1), "multilabel": torch.sigmoid}.get(model.task, lambda o: o)(o)[0]
    return {**out, "windows": [{**window, "scores": probs.tolist()}], "scores": probs.tolist()}


@torch.no_grad()
def predict_video(model: ExportedModel, source: str | bytes, stride: float | None = None, batch_size: int = 8) -> dict:
    """Scores of one video (a path or its bytes): ``{"duration_s", "windows": [{"start_s", "end_s",
    "scores"}], "scores": (C,) list}``; scores are probabilities (classification: softmax,
    multi-label: sigmoid) or the regressed value. A captioner gives ``{"duration_s", "windows":
    [{"start_s", "end_s", "caption"}], "caption"}`` instead. ``"warnings"`` when packets did not decode.

    Streaming: frames are decoded one at a time and only those the pending windows use are kept
    (resized and cropped); each window is scored once its frames are in, in batches of
    ``batch_size``. Memory is bounded by one window span and one batch, whatever the video's length
    or resolution. The windows are :func:`data.clips.plan_clips`' (``windows`` mode) for the decoded
    frame count, the same as evaluation's. A segments model (``data.sampling: segments``) without
    ``stride`` is scored by :func:`predict_segments`; with ``stride`` it slides windows as above.

    Raises:
        ValueError: not a readable video, an image, or no frame decodes.
    """
    d = model.config["data"]
    if d.get("sampling") == "segments" and not stride:
        return predict_segments(model, source)
    T, S = int(d["frames"]), float(d["clip_seconds"])
    stride = stride or S
    counts: dict = {}
    kept: dict[int, torch.Tensor] = {}  # frame index -> (3, size, size), the frames pending windows use
    need: dict[int, int] = {}  # frame index -> pending windows that use it
    planned: list[tuple[float, np.ndarray]] = []  # (start s, unclamped frame indices (T,)) not yet scored
    ready: list[tuple[float, torch.Tensor]] = []  # (start s, clip (T, 3, size, size)) waiting for a batch
    results: list[tuple[float, object]] = []
    next_k, n, last = 0, 0, None
    device = next(model.decoder.parameters()).device

    def transform(frame: av.VideoFrame) -> torch.Tensor:
        rgb = torch.from_numpy(frame.to_ndarray(format="rgb24"))[None]  # (1, H, W, 3) uint8
        return spatial_transform(rgb, d["image_size"], model.encoder.mean, model.encoder.std, train=False, rng=None)[0]

    def run_batch() -> None:
        clips = torch.stack([c for _, c in ready]).to(device)  # (B, T, 3, size, size)
        outs = model.caption(clips) if model.task == "captioning" else list(model(clips).float().cpu())
        results.extend(zip([s0 for s0, _ in ready], outs))
        ready.clear()

    def emit(start: float, idx: np.ndarray) -> None:
        ready.append((start, torch.stack([kept[int(i)] for i in idx])))
        for i in idx:
            need[int(i)] -= 1
        if len(ready) == batch_size:
            run_batch()

    try:
        for i, frame in enumerate(decoded_frames(source, counts)):
            fps = counts["fps"]
            n, last = i + 1, frame
            while True:  # plan every window whose first frame is decoded by now
                start = next_k * stride
                first = int(np.floor(start * fps + 0.5))
                if first > i:
                    break
                idx = np.floor((start + np.arange(T) * (S / T)) * fps + 0.5).astype(np.int64)  # (T,) unclamped
                planned.append((start, idx))
                for j in idx:
                    need[int(j)] = need.get(int(j), 0) + 1
                next_k += 1
            if need.get(i):
                kept[i] = transform(frame)
            while planned and planned[0][0] + S <= n / fps + 1e-6 and int(planned[0][1].max()) <= i:
                emit(*planned.pop(0))
            lowest = min((int(p[1].min()) for p in planned), default=next_k * stride * fps)
            for j in [j for j in kept if j < lowest and not need.get(j)]:
                del kept[j]
    except av.error.FFmpegError as e:
        raise ValueError(f"decoding failed: {e}") from None
    check_frame_count(n)
    fps = counts["fps"]
    dur = n / fps
    while next_k * stride <= max(dur - S, 0.0) + 1e-6:  # windows whose first frame lies past the end
        start = next_k * stride
        planned.append((start, np.floor((start + np.arange(T) * (S / T)) * fps + 0.5).astype(np.int64)))
        next_k += 1
    for start, idx in planned:  # the end of the video: the windows that fit, frames clamped to the last
        if start > max(dur - S, 0.0) + 1e-6:
            break
        idx = np.clip(idx, 0, n - 1)
        if n - 1 in idx and n - 1 not in kept:
            kept[n - 1] = transform(last)
        for j in idx:
            need[int(j)] = need.get(int(j), 0) + 1
        emit(start, idx)
    if ready:
        run_batch()
    windows = [{"start_s": round(s0, 3), "end_s": round(min(dur, s0 + S), 3)} for s0, _ in results]
    out: dict = {"duration_s": n / fps}
    if counts.get("bad_packets"):
        out["warnings"] = [f"{counts['bad_packets']} packet(s) did not decode and were skipped ({n} frames decoded)"]
    if model.task == "captioning":
        caps = [c for _, c in results]
        for w, c in zip(windows, caps):
            w["caption"] = c
        return {**out, "caption": caps[(len(caps) - 1) // 2], "windows": windows}
    outs = torch.stack([o for _, o in results])  # (W, C)
    probs = {"classification": lambda o: o.softmax(-1), "multilabel": torch.sigmoid}.get(model.task, lambda o: o)(outs)
    for w, p in zip(windows, probs):
        w["scores"] = p.tolist()
    return {**out, "windows": windows, "scores": probs.mean(0).tolist()}


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
    except (OSError, ValueError) as e:  # missing, truncated or foreign file
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
        if "segments" in w[0]:
            print(f"{path}  ({out['duration_s']:.1f} s, {w[0]['segments']} segments over the whole video)")
        else:
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
    if not os.path.isfile(path):
        raise OSError(f"no such file: {path}")
    out = {"task": model.task, **predict_video(model, path, stride)}
    if model.task != "captioning":
        out["answer"] = summary(model, out["scores"], threshold=threshold)
    if captioner is not None:
        cap = predict_video(captioner, path, stride)
        out["caption"] = cap["caption"]
        if [w["start_s"] for w in cap["windows"]] == [w["start_s"] for w in out["windows"]]:
            for w, c in zip(out["windows"], cap["windows"]):
                w["caption"] = c["caption"]
        else:  # the captioner's own clip length: its own windows
            out["caption_windows"] = cap["windows"]
    return out


if __name__ == "__main__":
    sys.exit(main())
