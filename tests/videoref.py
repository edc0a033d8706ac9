"""Independent references for the video tests: ffmpeg CLI decodes and PSNR."""
from __future__ import annotations

import io
import subprocess

import av
import numpy as np


def ffmpeg_frames(src: str, start: float, length: float, fps: float, width: int, height: int) -> np.ndarray:
    """Decode ``src`` with the ffmpeg CLI: [start, start+length) s resampled to ``fps`` and scaled to
    width x height; returns uint8 (F, H, W, 3) RGB."""
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-ss", f"{start:.3f}", "-i", src, "-t", f"{length:.3f}",
           "-vf", f"fps={fps},scale={width}:{height}", "-pix_fmt", "rgb24", "-f", "rawvideo", "-"]
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def pyav_frames(data: bytes) -> np.ndarray:
    """Decode an in-memory video with PyAV; uint8 (F, H, W, 3) RGB."""
    with av.open(io.BytesIO(data)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 arrays of one shape."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def make_clip(dst: str, src: str, start: float, length: float, *args: str) -> str:
    """Cut a real clip with the ffmpeg CLI (extra encoder args after the input); returns dst."""
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-ss", str(start), "-i", src, "-t", str(length),
                    *args, dst], check=True)
    return dst
