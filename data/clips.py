"""Clip sampling from one decoded video, shared by every decode backend.

All times are seconds from the start of the sample; ``fps`` is the sample's frame rate and
``num_frames`` its decoded frame count. A clip of T frames spanning S seconds from ``start`` takes
frames at ``start + i * S / T`` (i = 0..T-1), rounded to the nearest decoded frame and clamped.

Modes and their outputs (per video):

* ``pretrain`` (LSMCL): one long clip (T_long frames over S_long s) and one short clip (T_short
  frames over S_short s), inside the long span or anywhere in the video - both index the same
  decoded frames (one decode per sample).
* ``train``: one clip at a random start.
* ``val``: one clip, centred (``center``) or spanning the whole video (``full``).
* ``windows``: every window of S seconds at ``stride`` seconds (LVU protocol: 60 s / 1 s), at
  least one; each with its bounds so metrics can aggregate per video.
* ``all_segments``: one output per segment of ``segment_seconds`` (its centre frame): what the
  feature cache stores for ``sampling="segments"`` training, which then draws T of them per epoch.

``sampling="segments"`` (``train`` and ``val``) is the ViS4mer authors' Breakfast / COIN protocol
instead of one contiguous window: the video is cut into ``floor(duration / segment_seconds)``
segments (their features: one row per second) and T of them are taken over the *whole* video -
training a random sorted sample without repetition, evaluation T uniformly spaced ones, a video
with fewer than T segments stretched (segments repeat); :func:`segment_indices`. Each segment
contributes its centre frame.

Randomness comes from a generator seeded by (seed, epoch, sample key), so a sample's clips do not
depend on which worker or rank reads it, nor on a resume.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

MODES = ("pretrain", "train", "val", "windows", "all_segments")
SAMPLINGS = ("window", "segments")


@dataclass(frozen=True)
class ClipSpec:
    """What to cut from each video (see module docstring). Units: frames and seconds."""

    mode: str = "train"
    frames: int = 16  # T
    seconds: float = 8.0  # S, span of a clip or window
    stride: float = 1.0  # windows mode
    val_clip: str = "center"  # center | full
    long_frames: int = 16
    long_seconds: float = 8.0
    short_frames: int = 4
    short_seconds: float = 2.0
    short_inside_long: bool = True
    sampling: str = "window"  # train / val: one window of S seconds, or T segments over the whole video
    segment_seconds: float = 1.0  # segments sampling: the length of one segment
    crop_scale: tuple | None = None  # training: random resized crop area fraction (lo, hi); None: plain random crop
    crop_ratio: tuple = (0.75, 4 / 3)  # its aspect ratio range (width / height)
    hflip: float = 0.0  # training: probability of a horizontal flip
    window_labels: str = "video"  # multi-label training: "timed" = the actions overlapping the clip; "video" = all

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode: {self.mode!r} not allowed; allowed values: {', '.join(MODES)}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling: {self.sampling!r} not allowed; allowed values: {', '.join(SAMPLINGS)}")
        if self.segment_seconds <= 0:
            raise ValueError(f"segment_seconds: must be > 0, got {self.segment_seconds}")
        if self.crop_scale is not None and not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise ValueError(f"crop_scale: need 0 < lo <= hi <= 1, got {self.crop_scale}")
        if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio: need 0 < lo <= hi, got {self.crop_ratio}")
        if not 0.0 <= self.hflip <= 1.0:
            raise ValueError(f"hflip: a probability in [0, 1], got {self.hflip}")
        if self.window_labels not in ("timed", "video"):
            raise ValueError(f"window_labels: {self.window_labels!r} not allowed; allowed values: 'timed', 'video'")
        if self.val_clip not in ("center", "full"):
            raise ValueError(f"eval_clip: {self.val_clip!r} not allowed; allowed values: 'center', 'full'")


def sample_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    """A generator that depends only on (seed, epoch, key)."""
    h = hashlib.blake2b(f"{seed}/{epoch}/{key}".encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(h, "little"))


def frame_indices(start: float, seconds: float, frames: int, fps: float, num_frames: int) -> np.ndarray:
    """Indices (frames,) of the frames at ``start + i * seconds / frames`` s, clamped to the video."""
    t = start + np.arange(frames) * (seconds / frames)  # (T,) seconds
    return np.clip(np.floor(t * fps + 0.5).astype(np.int64), 0, max(0, num_frames - 1))


def segment_indices(num_segments: int, count: int, train: bool, rng: np.random.Generator | None = None) -> np.ndarray:
    """Indices (count,) of the segments a video of ``num_segments`` contributes, ascending - the
    ViS4mer authors' sampling (``datasets/breakfast_dataset.py`` and ``coin_dataset.py`` of
    md-mohaiminul/ViS4mer, which index per-second features):

    * more segments than ``count``, training: ``count`` distinct segments drawn uniformly at random
      (their ``random.sample(range(n), count)``, sorted); ``rng`` draws them;
    * more segments, evaluation, and every video with fewer segments (stretched: indices repeat):
      ``np.arange(0, n, n / count, dtype=float32)`` truncated to int, i.e. uniformly spaced. Their
      float32 ``arange`` is kept bit for bit; for a ``count`` that is not a power of two it can
      yield ``count + 1`` values, the last one ``n`` itself (their indexing then raises
      IndexError; their ``count`` is 64, where it never happens), so the first ``count`` are taken;
    * exactly ``count`` segments: all of them.

    Raises ValueError for ``num_segments`` or ``count`` < 1.
    """
    if num_segments < 1 or count < 1:
        raise ValueError(f"segment_indices: needs at least one segment and one index, got {num_segments}, {count}")
    if num_segments == count:
        return np.arange(count)
    if num_segments > count and train:
        return np.sort(rng.choice(num_segments, size=count, replace=False))
    step = num_segments / float(count)
    return np.arange(0, num_segments, step, dtype=np.float32).astype(np.int32)[:count].astype(np.int64)


def num_segments(duration: float, segment_seconds: float) -> int:
    """The whole segments of ``segment_seconds`` in ``duration`` seconds (at least one)."""
    return max(1, int(duration / segment_seconds + 1e-9))


def segment_frames(segments: np.ndarray, segment_seconds: float, fps: float, num_frames: int) -> np.ndarray:
    """Frame indices (T,) of the centre frames of ``segments`` (T,), clamped to the video."""
    t = (segments + 0.5) * segment_seconds  # (T,) seconds
    return np.clip(np.floor(t * fps).astype(np.int64), 0, max(0, num_frames - 1))


def plan_clips(spec: ClipSpec, num_frames: int, fps: float, rng: np.random.Generator) -> list[dict]:
    """The clips to cut from one video: a list of {name: (indices, (start_s, end_s))} dicts, one
    per output sample (several only in ``windows`` mode)."""
    dur = num_frames / fps

    def rand_start(span: float, lo: float = 0.0, hi: float | None = None) -> float:
        hi = dur if hi is None else hi
        room = hi - lo - span
        return lo + (rng.uniform(0, room) if room > 0 else 0.0)

    def clip(start: float, span: float, frames: int):
        return frame_indices(start, span, frames, fps, num_frames), (start, min(dur, start + span))

    if spec.mode == "pretrain":
        ls = rand_start(spec.long_seconds)
        if spec.short_inside_long:
            ss = rand_start(spec.short_seconds, ls, min(dur, ls + spec.long_seconds))
        else:
            ss = rand_start(spec.short_seconds)
        return [{"long": clip(ls, spec.long_seconds, spec.long_frames),
                 "short": clip(ss, spec.short_seconds, spec.short_frames)}]
    if spec.mode == "all_segments" or (spec.sampling == "segments" and spec.mode in ("train", "val")):
        n = num_segments(dur, spec.segment_seconds)
        if spec.mode == "all_segments":
            return [{"video": (segment_frames(np.array([s]), spec.segment_seconds, fps, num_frames),
                               (s * spec.segment_seconds, min(dur, (s + 1) * spec.segment_seconds)))}
                    for s in range(n)]
        seg = segment_indices(n, spec.frames, spec.mode == "train", rng)  # (T,)
        return [{"video": (segment_frames(seg, spec.segment_seconds, fps, num_frames), (0.0, dur))}]
    if spec.mode == "train":
        return [{"video": clip(rand_start(spec.seconds), spec.seconds, spec.frames)}]
    if spec.mode == "val":
        if spec.val_clip == "full":
            return [{"video": clip(0.0, dur, spec.frames)}]
        return [{"video": clip(max(0.0, (dur - spec.seconds) / 2), spec.seconds, spec.frames)}]
    starts = np.arange(0.0, max(dur - spec.seconds, 0.0) + 1e-6, spec.stride)  # windows
    return [{"video": clip(float(s), spec.seconds, spec.frames)} for s in starts]


def random_resized_box(H: int, W: int, scale: tuple, ratio: tuple, rng: np.random.Generator) -> tuple:
    """(top, left, h, w) pixels of a random resized crop of an H x W frame (the "Inception" crop,
    Szegedy et al. 2015, as torchvision's ``RandomResizedCrop.get_params``): up to 10 draws of an
    area fraction uniform in ``scale`` and an aspect ratio (w / h) log-uniform in ``ratio`` until the
    box fits, else the largest centred box whose ratio is clamped to ``ratio``."""
    area = H * W
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= W and 0 < h <= H:
            return int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1)), h, w
    in_ratio = W / H
    if in_ratio < ratio[0]:
        w, h = W, int(round(W / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = H, int(round(H * ratio[1]))
    else:
        h, w = H, W
    return (H - h) // 2, (W - w) // 2, h, w


def spatial_transform(frames: torch.Tensor, size: int, mean, std, train: bool, rng: np.random.Generator,
                      crop_scale: tuple | None = None, crop_ratio: tuple = (0.75, 4 / 3),
                      hflip: float = 0.0) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (T, 3, size, size): resize the short side to ``size`` (bilinear,
    antialiased), crop ``size`` x ``size`` (random in training, centre otherwise), scale to [0, 1]
    and normalise with the encoder's mean/std. The resize runs on the uint8 frames (channels-last,
    torch's vectorised uint8 kernel, 6x faster than in float32; within one grey level of it), and
    only the crop is converted to float.

    Training augmentation (one draw per clip, applied to all T frames): ``crop_scale`` (lo, hi)
    replaces the crop by a random resized crop (:func:`random_resized_box` on the frame, the box
    resized to ``size`` x ``size``); ``hflip`` is the probability of mirroring the clip left-right."""
    x = frames.permute(0, 3, 1, 2)  # (T, 3, H, W) uint8, a channels-last view
    H, W = x.shape[-2:]
    if train and crop_scale is not None:
        top, left, h, w = random_resized_box(H, W, crop_scale, crop_ratio, rng)
        x = F.interpolate(x[..., top:top + h, left:left + w], size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False).float().div_(255.0)  # (T, 3, size, size)
    else:
        scale = size / min(H, W)
        nh, nw = max(size, round(H * scale)), max(size, round(W * scale))
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)  # (T, 3, nh, nw)
        if train:
            top, left = int(rng.integers(0, nh - size + 1)), int(rng.integers(0, nw - size + 1))
        else:  # centre, rounded half up like DALI's crop anchor (crop_pos 0.5), so both backends agree
            top, left = int((nh - size) / 2 + 0.5), int((nw - size) / 2 + 0.5)
        x = x[..., top:top + size, left:left + size].float().div_(255.0)  # (T, 3, size, size)
    if train and hflip > 0 and rng.random() < hflip:
        x = x.flip(-1)  # (T, 3, size, size) mirrored left-right
    m = torch.tensor(mean, dtype=x.dtype)[:, None, None]
    s = torch.tensor(std, dtype=x.dtype)[:, None, None]
    return (x - m) / s


def split_descriptions(text: str) -> list[str]:
    """The captions of one video: Charades' ``descriptions`` field holds one per annotator separated
    by ``;`` (``Charades_v1_train.csv``); empty parts are dropped. A plain caption is a list of one."""
    return [p.strip() for p in (text or "").split(";") if p.strip()] or [""]


def window_targets(actions: list, bounds: tuple, duration: float, num_classes: int) -> torch.Tensor:
    """Multi-hot (C,) targets of a window: the classes of the timed ``actions`` ([class, start, end]
    seconds, Charades' ``actions`` field) whose interval, clamped to [0, ``duration``] (annotations
    may run past the video), overlaps the window ``bounds`` = (start, end) seconds."""
    out = torch.zeros(num_classes)
    lo, hi = float(bounds[0]), float(bounds[1])
    for c, start, end in actions:
        start, end = min(max(float(start), 0.0), duration), min(max(float(end), 0.0), duration)
        if start < hi and end > lo:
            out[int(c)] = 1.0
    return out
