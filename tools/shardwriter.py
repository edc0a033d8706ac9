"""The sharding engine: validate + transcode inputs in parallel, write WebDataset tar shards atomically.

Each :class:`Item` (one input video or one segment of it) becomes one sample with two members:

* ``<key>.mp4`` - the video re-encoded (VP9 in MP4 by default; ``h264`` or ``copy`` on request) at
  ``fps`` frames per second, short side ``short_side`` pixels, one keyframe every
  ``keyframe_seconds`` seconds;
* ``<key>.json`` - metadata: ``label`` (int class index, list of indices, float target or null),
  ``label_name``, ``duration`` (seconds), ``fps``, ``num_frames``, ``width``, ``height``,
  ``source`` (path), ``segment`` ([start, end] seconds in the source), ``codec``, ``dataset`` and the
  dataset-specific fields of the item.

Items are grouped per split into shards of at most ``samples_per_shard`` samples and
``max_shard_bytes`` bytes. A shard is written to ``<name>.tmp`` and renamed when complete, then a
marker in ``.done/`` records its contents, so an interrupted run never leaves a partial shard that
looks complete, and a re-run skips finished shards. ``manifest.json`` and ``rejected.jsonl`` are
rewritten (atomically) at the end of every run.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import subprocess
import tarfile
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import av
from tqdm import tqdm

MANIFEST_VERSION = 1


@dataclass
class Item:
    """One input to shard: a video file, optionally a segment [start, end) of it in seconds."""

    key: str  # unique sample key (no dots; sanitised by :func:`sanitize_key`)
    path: str
    split: str
    label: Any = None  # int class index | list[int] | float | None (unlabelled)
    label_name: Any = None
    start: float | None = None  # seconds
    end: float | None = None  # seconds
    extra: dict = field(default_factory=dict)  # dataset-specific metadata
    group: str | None = None  # the source video (or person): a carved validation split never divides one


@dataclass
class EncodeOptions:
    codec: str = "vp9"  # vp9 | h264 | copy
    fps: float = 8.0  # output frames per second (ignored by copy)
    short_side: int = 256  # pixels (ignored by copy)
    keyframe_seconds: float = 2.0
    crf: int = 30
    threads: int = 1  # ffmpeg threads per job
    min_decoded_fraction: float = 0.8  # reject when fewer frames than this fraction decode
    min_seconds: float = 0.25  # reject segments shorter than this


def sanitize_key(text: str) -> str:
    """A WebDataset-safe key: webdataset splits keys at the first dot, so no dots or slashes."""
    return re.sub(r"[^A-Za-z0-9_\-]", "_", text)


class Rejected(Exception):
    """An input that cannot be sharded; the message is the reason written to rejected.jsonl."""


def _probe(path: str) -> tuple[float | None, str]:
    """Return (duration seconds or None, codec name) of the first video stream; raise Rejected."""
    p = Path(path)
    if not p.exists():
        raise Rejected("file not found")
    if p.stat().st_size == 0:
        raise Rejected("zero-byte file")
    try:
        with av.open(path) as c:
            if not c.streams.video:
                kinds = sorted({s.type for s in c.streams}) or ["none"]
                raise Rejected(f"no video stream (streams: {', '.join(kinds)})")
            s = c.streams.video[0]
            dur = None
            if s.duration is not None and s.time_base is not None:
                dur = float(s.duration * s.time_base)
            elif c.duration is not None:
                dur = c.duration / 1e6
            return dur, s.codec_context.name
    except Rejected:
        raise
    except Exception as e:  # av.error.InvalidDataError and friends
        msg = str(e).replace(f": '{path}'", "").replace(path, "<file>")
        kind = _container_signature(path)
        if kind:
            raise Rejected(f"truncated or corrupt {kind} file: the header is present but the container "
                           f"does not open ({type(e).__name__}: {msg})") from None
        raise Rejected(f"not a readable media file ({type(e).__name__}: {msg})") from None


def _container_signature(path: str) -> str | None:
    """Name the container a file's first bytes announce (MP4/MOV, AVI, Matroska/WebM), or None."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free"):
        return "MP4/MOV"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "Matroska/WebM"
    return None


def _ffmpeg_cmd(src: str, dst: str, start: float, length: float | None, o: EncodeOptions) -> list[str]:
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y"]
    if start > 0:
        cmd += ["-ss", f"{start:.3f}"]
    cmd += ["-i", src if "://" in src else os.path.abspath(src)]  # never a bare '-id.mp4' (ids may start with '-')
    if length is not None:
        cmd += ["-t", f"{length:.3f}"]
    cmd += ["-map", "0:v:0", "-an", "-sn", "-dn"]
    if o.codec == "copy":
        return cmd + ["-c:v", "copy", "-f", "mp4", dst]
    s = o.short_side
    # Pixels converted to BT.601 limited range and tagged so: DALI's decoders convert YUV->RGB as
    # BT.601 whatever the tag says, so this keeps DALI, ffmpeg and PyAV agreeing on colours.
    vf = (f"fps={o.fps},scale='if(gt(iw,ih),-2,{s})':'if(gt(iw,ih),{s},-2)'"
          ":out_color_matrix=bt601:out_range=tv,format=yuv420p")
    gop = max(1, round(o.keyframe_seconds * o.fps))
    cmd += ["-vf", vf, "-g", str(gop), "-keyint_min", str(gop), "-threads", str(o.threads),
            "-colorspace", "bt470bg", "-color_primaries", "bt470bg", "-color_trc", "smpte170m", "-color_range", "tv"]
    if o.codec == "vp9":
        cmd += ["-c:v", "libvpx-vp9", "-crf", str(o.crf), "-b:v", "0", "-deadline", "realtime",
                "-cpu-used", "8", "-row-mt", "1"]
    elif o.codec == "h264":
        cmd += ["-c:v", "libx264", "-preset", "veryfast", "-crf", str(min(o.crf, 51)), "-bf", "0"]
    else:
        raise ValueError(f"codec: {o.codec!r} not allowed; allowed values: 'vp9', 'h264', 'copy'")
    return cmd + ["-movflags", "+faststart", "-f", "mp4", dst]


def _count_frames(path: str) -> tuple[int, int, int, float]:
    """Decode ``path`` fully with PyAV: (frames, width, height, average fps)."""
    n, w, h = 0, 0, 0
    with av.open(path) as c:
        s = c.streams.video[0]
        fps = float(s.average_rate) if s.average_rate else 0.0
        for frame in c.decode(s):
            n += 1
            w, h = frame.width, frame.height
    return n, w, h, fps


def encode_item(item: Item, opts: EncodeOptions, workdir: str) -> dict:
    """Validate and transcode one item into ``workdir``. Runs in a worker process.

    Returns ``{"key", "split", "mp4": path, "json": dict}`` or ``{"key", "split", "rejected": reason}``.
    Never raises for bad input.
    """
    try:
        dur, src_codec = _probe(item.path)
        start = float(item.start or 0.0)
        end = item.end if item.end is not None else dur
        if dur is not None and end is not None:
            end = min(end, dur)
        length = None if end is None else end - start
        if length is not None and length < opts.min_seconds:
            raise Rejected(f"segment [{start:.2f}, {end:.2f}] s too short or outside the video (duration {dur} s)")
        dst = os.path.join(workdir, item.key + ".mp4")
        r = subprocess.run(_ffmpeg_cmd(item.path, dst, start, length, opts), capture_output=True, text=True)
        if r.returncode != 0 or not os.path.exists(dst) or os.path.getsize(dst) == 0:
            msg = (r.stderr.strip().splitlines() or ["no output"])[-1][:300]
            raise Rejected(f"ffmpeg could not decode the video stream: {msg}")
        try:
            n, w, h, out_fps = _count_frames(dst)
        except Exception as e:
            raise Rejected(f"re-encoded stream does not decode: {e}") from None
        if n == 0:
            raise Rejected("undecodable video stream: no frame could be decoded")
        fps = opts.fps if opts.codec != "copy" else (out_fps or opts.fps)
        decoded_s = n / fps
        if length is not None and decoded_s < opts.min_decoded_fraction * length:
            raise Rejected(
                f"truncated or partly undecodable: decoded {decoded_s:.2f} s of the expected {length:.2f} s")
        # the fps filter rounds the frame count up: never record more than the cut we asked for
        seg_s = decoded_s if length is None else min(decoded_s, length)
        meta = {
            "key": item.key, "label": item.label, "label_name": item.label_name,
            "duration": round(seg_s, 4), "fps": fps, "num_frames": n, "width": w, "height": h,
            "source": item.path, "segment": [start, round(start + seg_s, 4)], "source_codec": src_codec,
            "codec": opts.codec if opts.codec != "copy" else src_codec, "split": item.split, **item.extra,
        }
        return {"key": item.key, "split": item.split, "mp4": dst, "json": meta}
    except Rejected as e:
        return {"key": item.key, "split": item.split, "path": item.path, "rejected": str(e)}
    except Exception as e:  # an unexpected failure on one input must not abort the run
        return {"key": item.key, "split": item.split, "path": item.path,
                "rejected": f"unexpected error: {type(e).__name__}: {e}"}


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # reproducible shards
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _write_shard_group(out: Path, base: str, results: list[dict], max_bytes: int) -> list[dict]:
    """Write the accepted samples of one group to ``base.tar`` (or ``base_NN.tar`` parts when
    ``max_bytes`` is exceeded), each through a temporary name. Returns [{"name", "num_samples"}]."""
    parts: list[list[dict]] = [[]]
    size = 0
    for r in results:
        n = os.path.getsize(r["mp4"]) + 2048
        if parts[-1] and size + n > max_bytes:
            parts.append([])
            size = 0
        parts[-1].append(r)
        size += n
    written = []
    for i, part in enumerate(parts):
        if not part:
            continue
        name = f"{base}.tar" if len(parts) == 1 else f"{base}_{i:02d}.tar"
        tmp = out / (name + ".tmp")
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for r in part:
                with open(r["mp4"], "rb") as f:
                    _add_member(tar, r["key"] + ".mp4", f.read())
                _add_member(tar, r["key"] + ".json", json.dumps(r["json"], sort_keys=True).encode())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out / name)
        written.append({"name": name, "num_samples": len(part)})
    return written


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _fingerprint(items: list[Item], opts: EncodeOptions) -> str:
    h = hashlib.sha1(json.dumps(asdict(opts), sort_keys=True).encode())
    for it in items:
        h.update(json.dumps(asdict(it), sort_keys=True, default=str).encode())
    return h.hexdigest()


def make_shards(
    items: Iterable[Item],
    out: str | os.PathLike,
    opts: EncodeOptions,
    classes: list[str] | None = None,
    workers: int = 2,
    samples_per_shard: int = 100,
    max_shard_bytes: int = 1 << 30,
    dataset: str = "",
    extra_manifest: dict | None = None,
    pre_rejected: Iterable[dict] = (),
    progress: bool = True,
    shuffle_seed: int = 0,
) -> dict:
    """Shard ``items`` into ``out``; returns the manifest dict (also written to manifest.json).

    Samples of a split are shuffled (``shuffle_seed``) before they are grouped into shards, so a
    shard mixes classes. ``pre_rejected`` are inputs a dataset parser already refused (e.g. a video missing on disk),
    ``{"key", "path", "reason"}`` each; they go to rejected.jsonl with the rest.
    Bad inputs never raise: they are listed in ``rejected.jsonl`` with their reason.
    """
    out = Path(out)
    (out / ".done").mkdir(parents=True, exist_ok=True)
    items = list(items)
    keys = [it.key for it in items]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})[:5]
        raise ValueError(f"duplicate sample keys from the dataset parser: {dup}")
    by_split: dict[str, list[Item]] = {}
    for it in sorted(items, key=lambda i: (i.split, i.key)):
        by_split.setdefault(it.split, []).append(it)
    for split, its in by_split.items():  # mix classes across and within shards, reproducibly
        random.Random(f"{shuffle_seed}-{split}").shuffle(its)

    groups = []  # (split, base name, items, fingerprint)
    for split, its in by_split.items():
        for gi in range(0, len(its), samples_per_shard):
            g = its[gi:gi + samples_per_shard]
            groups.append((split, f"{sanitize_key(split)}-{gi // samples_per_shard:06d}", g, _fingerprint(g, opts)))

    done: dict[str, dict] = {}
    pending = []
    for split, base, g, fp in groups:
        marker = out / ".done" / f"{base}.json"
        if marker.exists():
            m = json.loads(marker.read_text())
            if m.get("fingerprint") == fp and all((out / s["name"]).exists() for s in m["shards"]):
                done[base] = m
                continue
        pending.append((split, base, g, fp))

    t0 = time.time()
    n_pending = sum(len(g) for _, _, g, _ in pending)
    if pending:
        workdir = tempfile.mkdtemp(prefix=".work-", dir=out)
        flat = [(it, base) for _, base, g, _ in pending for it in g]
        bar = tqdm(total=n_pending, desc=f"sharding {dataset or out.name}", unit="video", disable=not progress)
        try:
            with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
                results = pool.map(encode_item, [it for it, _ in flat], [opts] * len(flat),
                                   [workdir] * len(flat), chunksize=1)
                group_iter = iter(pending)
                split, base, g, fp = next(group_iter)
                acc: list[dict] = []
                for r in results:
                    acc.append(r)
                    bar.update(1)
                    if len(acc) == len(g):
                        ok = [x for x in acc if "rejected" not in x]
                        shards = _write_shard_group(out, base, ok, max_shard_bytes)
                        rejected = [{"key": x["key"], "path": x["path"], "split": x["split"],
                                     "reason": x["rejected"]} for x in acc if "rejected" in x]
                        m = {"split": split, "fingerprint": fp, "shards": shards, "rejected": rejected,
                             "seconds": sum(x["json"]["duration"] for x in ok)}
                        _atomic_write(out / ".done" / f"{base}.json", json.dumps(m))
                        done[base] = m
                        for x in ok:
                            os.unlink(x["mp4"])
                        acc = []
                        split, base, g, fp = next(group_iter, (None, None, None, None))
        finally:
            bar.close()
            for f in Path(workdir).glob("*"):
                f.unlink()
            os.rmdir(workdir)

    manifest: dict[str, Any] = {"version": MANIFEST_VERSION, "dataset": dataset, "splits": {},
                                "classes": list(classes or []),
                                "encode": asdict(opts), **(extra_manifest or {})}
    rejected_all = [dict(r, split=r.get("split")) for r in pre_rejected]
    for split, base, g, fp in groups:
        m = done[base]
        sp = manifest["splits"].setdefault(split, {"shards": [], "shard_samples": [], "num_samples": 0, "seconds": 0.0})
        sp["shards"] += [s["name"] for s in m["shards"]]
        sp["shard_samples"] += [s["num_samples"] for s in m["shards"]]
        sp["num_samples"] += sum(s["num_samples"] for s in m["shards"])
        sp["seconds"] = round(sp["seconds"] + m.get("seconds", 0.0), 3)
        rejected_all += m["rejected"]
    _atomic_write(out / "rejected.jsonl", "".join(json.dumps(r) + "\n" for r in rejected_all))
    _atomic_write(out / "manifest.json", json.dumps(manifest, indent=1))
    n_ok = sum(s["num_samples"] for s in manifest["splits"].values())
    secs = sum(s["seconds"] for s in manifest["splits"].values())
    manifest["_summary"] = {"sharded": n_ok, "rejected": len(rejected_all), "wall_s": time.time() - t0,
                            "transcoded": n_pending, "video_seconds": secs}
    return manifest
