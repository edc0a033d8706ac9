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
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

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
    # info level, each line tagged with its level: showinfo's per-frame lines count the source frames
    # that decoded (see encode_item); errors stay recognisable by their "[error]" tag
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-nostats", "-loglevel", "repeat+level+info", "-y"]
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
    vf = (f"showinfo=checksum=0,fps={o.fps},scale='if(gt(iw,ih),-2,{s})':'if(gt(iw,ih),{s},-2)'"
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


def count_packets(path: str, start: float = 0.0, length: float | None = None) -> int:
    """Coded video frames (non-empty packets) the container lists with a timestamp in
    [``start``, ``start + length``) seconds - what the file claims, read without decoding."""
    n = 0
    with av.open(path) as c:
        s = c.streams.video[0]
        tb = float(s.time_base) if s.time_base else 0.0
        t0 = float(s.start_time * tb) if s.start_time is not None else 0.0
        for pkt in c.demux(s):
            if not pkt.size:
                continue
            ts = pkt.pts if pkt.pts is not None else pkt.dts
            t = ts * tb - t0 if ts is not None else None
            if t is None or (t >= start - 1e-6 and (length is None or t < start + length - 1e-6)):
                n += 1
    return n


_SHOWINFO_PTS = re.compile(r"Parsed_showinfo.*\bpts_time:\s*(-?[\d.]+)")


def _decoded_source_frames(stderr: str, length: float | None) -> int:
    """Source frames that decoded and entered the filter graph (ffmpeg's showinfo lines), within the cut."""
    times = [float(t) for t in _SHOWINFO_PTS.findall(stderr)]
    return sum(1 for t in times if length is None or t < length - 1e-6)


def encode_item(item: Item, opts: EncodeOptions, workdir: str) -> dict:
    """Validate and transcode one item into ``workdir``. Runs in a worker process.

    Returns ``{"key", "split", "mp4": path, "json": dict}`` or ``{"key", "split", "rejected": reason}``.
    Two checks of how much of the input really decodes, each against ``opts.min_decoded_fraction``:
    the output's frames against the cut's length (a short or truncated file), and the source frames
    that decoded against the coded frames the container lists for the cut (a frozen gap: corrupt
    data in the middle, which the frame-rate filter would otherwise fill with one repeated frame).
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
            errors = [ln for ln in r.stderr.strip().splitlines() if "[error]" in ln or "[fatal]" in ln]
            msg = (errors or r.stderr.strip().splitlines() or ["no output"])[-1][:300]
            raise Rejected(f"ffmpeg could not decode the video stream: {msg.replace('[error] ', '')}")
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
        if opts.codec == "copy":  # the stream itself: its decoded frames against its packets
            coded, decoded = count_packets(dst), n
        else:
            coded, decoded = count_packets(item.path, start, length), _decoded_source_frames(r.stderr, length)
        if coded and decoded < opts.min_decoded_fraction * coded:
            raise Rejected(f"partly undecodable: {decoded} of the {coded} coded frames of the cut decode "
                           f"({decoded / coded:.0%}; the rest would be one frozen frame repeated); "
                           f"--min-decoded-fraction is {opts.min_decoded_fraction:g}")
        # the fps filter rounds the frame count up: never record more than the cut we asked for
        seg_s = decoded_s if length is None else min(decoded_s, length)
        stats = {"duration": round(seg_s, 4), "fps": fps, "num_frames": n, "width": w, "height": h,
                 "segment": [start, round(start + seg_s, 4)], "source_codec": src_codec,
                 "codec": opts.codec if opts.codec != "copy" else src_codec,
                 "decoded_fraction": round(min(1.0, decoded / coded), 4) if coded else None}
        return {"key": item.key, "split": item.split, "mp4": dst, "stats": stats}
    except Rejected as e:
        return {"key": item.key, "split": item.split, "path": item.path, "rejected": str(e)}
    except Exception as e:  # an unexpected failure on one input must not abort the run
        return {"key": item.key, "split": item.split, "path": item.path,
                "rejected": f"unexpected error: {type(e).__name__}: {e}"}


def sample_meta(item: Item, stats: dict) -> dict:
    """The ``<key>.json`` of a sample: the item's label and dataset fields + the encode's stats."""
    return {"key": item.key, "label": item.label, "label_name": item.label_name, "source": item.path,
            **stats, "split": item.split, **item.extra}


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # reproducible shards
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _write_shard_group(out: Path, base: str, results: list[dict], max_bytes: int) -> list[dict]:
    """Write the accepted samples of one group to ``base.tar`` (or ``base_NN.tar`` parts when
    ``max_bytes`` is exceeded), each through a temporary name. Returns [{"name", "num_samples", "keys"}]."""
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
        written.append({"name": name, "num_samples": len(part), "keys": [r["key"] for r in part]})
    return written


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def input_fingerprint(item: Item, opts: EncodeOptions) -> str:
    """What the encoded sample of ``item`` depends on: the source file (absolute path, size, mtime in
    ns, sha1 of its first and last 64 KiB - a file replaced at the same path differs in at least
    one), the cut (start, end, seconds) and the encode settings. A missing file has its own value,
    so the file appearing later is noticed."""
    h = hashlib.sha1(json.dumps([os.path.abspath(item.path), item.start, item.end, asdict(opts)]).encode())
    try:
        st = os.stat(item.path)
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        with open(item.path, "rb") as f:
            h.update(f.read(1 << 16))
            if st.st_size > 1 << 17:
                f.seek(-(1 << 16), os.SEEK_END)
                h.update(f.read(1 << 16))
    except OSError as e:
        h.update(f"unreadable:{type(e).__name__}".encode())
    return h.hexdigest()


def unique_keys(items: list[Item]) -> tuple[list[Item], list[str]]:
    """Make sample keys unique, deterministically; returns (items, warnings).

    An exact duplicate (same file, cut, split and label) is sharded once, with a warning. Keys that
    still collide (``x y.mp4`` and ``x_y.mp4`` both sanitise to ``x_y``) each get a suffix hashed from
    the item's file, cut, split and label, so the key does not depend on the order of the rows.
    """
    warnings, seen, out = [], {}, []
    for it in items:
        ident = (os.path.abspath(it.path), it.start, it.end, it.split, json.dumps(it.label))
        if ident in seen:
            seen[ident] += 1
            continue
        seen[ident] = 1
        out.append(it)
    for (path, a, b, split, _), n in seen.items():
        if n > 1:
            cut = "" if a is None and b is None else f" [{a}, {b}] s"
            warnings.append(f"duplicate row: {path}{cut} ({split}) is listed {n} times; sharded once")
    taken = {}
    for it in out:
        taken.setdefault(it.key, []).append(it)
    used = {k for k, its in taken.items() if len(its) == 1}
    for key, its in sorted(taken.items()):
        if len(its) == 1:
            continue
        for it in its:
            digest = hashlib.sha1(json.dumps([os.path.abspath(it.path), it.start, it.end, it.split,
                                              json.dumps(it.label)]).encode()).hexdigest()
            n = 8
            while f"{key}-{digest[:n]}" in used:
                n += 4
            it.key = f"{key}-{digest[:n]}"
            used.add(it.key)
        warnings.append(f"{len(its)} inputs map to the sample key {key!r} ({', '.join(sorted({i.path for i in its})[:3])}"
                        f"); keyed {', '.join(i.key for i in its[:3])}")
    return out, warnings


def overlap_warnings(items: list[Item]) -> list[str]:
    """The same footage in a training split and in val/test (a file whose cuts overlap in time)."""
    by_path: dict[str, list[Item]] = {}
    for it in items:
        by_path.setdefault(os.path.abspath(it.path), []).append(it)
    out = []
    for path, its in sorted(by_path.items()):
        train = [i for i in its if i.split == "train"]
        for other in (i for i in its if i.split in ("val", "test")):
            a0, a1 = other.start or 0.0, other.end if other.end is not None else float("inf")
            if any(max(a0, t.start or 0.0) < min(a1, t.end if t.end is not None else float("inf")) for t in train):
                out.append(f"the same footage is in train and {other.split}: {path} (sample {other.key})")
                break
    return out


def _label_ids(label: Any) -> list[int]:
    if isinstance(label, list):
        return [int(x) for x in label]
    return [label] if isinstance(label, int) and not isinstance(label, bool) else []


def class_counts(items: Iterable[Item], num_classes: int) -> list[int]:
    """Samples per class id (multi-label: a sample counts once for each of its classes)."""
    counts = [0] * num_classes
    for it in items:
        for c in _label_ids(it.label):
            if 0 <= c < num_classes:
                counts[c] += 1
    return counts


class SampleStore:
    """Encoded samples of one output directory, kept between runs (``<out>/.samples/``).

    ``<key>.json`` holds ``{"input": fingerprint, "stats": ...}`` or ``{"input", "rejected": reason}``
    and is written last (atomically), so a sample whose JSON exists is complete; ``<key>.mp4`` is the
    encoded video until a finished shard holds it. Finished shards are indexed too (``.done/``
    markers list each sample's input fingerprint), so an unchanged input is never transcoded twice
    and a changed one (other file content, cut, label or settings) never reuses its old encode.
    """

    def __init__(self, out: Path):
        self.out, self.dir = out, out / ".samples"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.in_shard: dict[str, tuple[str, str, dict]] = {}  # key -> (input fp, shard file, stats)
        self.old_shards: set[str] = set()  # shard files an earlier run wrote
        for marker in sorted((out / ".done").glob("*.json")):
            m = json.loads(marker.read_text())
            for sh in m.get("shards", []):
                self.old_shards.add(sh["name"])
                for key, (fp, stats) in sh.get("samples", {}).items():
                    if (out / sh["name"]).exists():
                        self.in_shard[key] = (fp, sh["name"], stats)

    def lookup(self, key: str, fp: str) -> dict | None:
        """The stored result of ``key`` if it was made from input ``fp``: {"stats"} or {"rejected"}."""
        rec = self.dir / f"{key}.json"
        if rec.exists():
            r = json.loads(rec.read_text())
            if r.get("input") == fp and ("rejected" in r or (self.dir / f"{key}.mp4").exists()):
                return r
        if key in self.in_shard and self.in_shard[key][0] == fp:
            return {"input": fp, "stats": self.in_shard[key][2]}
        return None

    def put(self, fp: str, result: dict) -> dict:
        rec = {"input": fp, **({"rejected": result["rejected"]} if "rejected" in result else {"stats": result["stats"]})}
        _atomic_write(self.dir / f"{result['key']}.json", json.dumps(rec))
        return rec

    def materialise(self, keys: list[str]) -> None:
        """Copy the encoded videos of ``keys`` that only a finished shard holds into the store (before
        shards are rewritten), reading each shard once."""
        by_shard: dict[str, set[str]] = {}
        for k in keys:
            if not (self.dir / f"{k}.mp4").exists():
                by_shard.setdefault(self.in_shard[k][1], set()).add(k)
        for name, want in by_shard.items():
            with tarfile.open(self.out / name) as tar:
                for member in tar:
                    key, _, ext = member.name.partition(".")
                    if ext == "mp4" and key in want:
                        tmp = self.dir / f".{key}.mp4.tmp"
                        tmp.write_bytes(tar.extractfile(member).read())
                        os.replace(tmp, self.dir / f"{key}.mp4")

    def release(self, keys: Iterable[str]) -> None:
        """Drop the store's copies of samples a finished shard now holds (their markers index them)."""
        for k in keys:
            for suffix in (".mp4", ".json"):
                (self.dir / f"{k}{suffix}").unlink(missing_ok=True)


def _group_fingerprint(items: list[Item], fps: dict[str, str], stats: dict[str, dict]) -> str:
    h = hashlib.sha1()
    for it in items:
        h.update(json.dumps([fps[it.key], sample_meta(it, stats[it.key])], sort_keys=True, default=str).encode())
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
    carve: Callable[[list[Item]], dict | None] | None = None,
) -> dict:
    """Shard ``items`` into ``out``; returns the manifest dict (also written to manifest.json).

    Three phases: (1) every input is validated and encoded into the directory's sample store
    (:class:`SampleStore`; inputs whose fingerprint is unchanged since an earlier run are reused,
    changed ones are encoded again); (2) ``carve`` (e.g. :func:`tools.datasets.carve_val`) moves
    samples between splits, on the inputs that were actually encoded, never on rejected ones;
    (3) the samples of a split are shuffled (``shuffle_seed``) and grouped into shards, so a shard
    mixes classes; a shard whose samples, inputs and metadata are unchanged is kept, any other is
    rewritten through a temporary name. Shards of an earlier run that the new plan no longer names
    are removed. ``pre_rejected`` are inputs a dataset parser already refused
    (``{"key", "path", "reason"}``); they go to rejected.jsonl with the rest.

    The manifest records per-split ``class_counts``, ``classes_without_train`` (classes that had
    training inputs and kept no training sample: every file rejected) and ``warnings`` (duplicate
    rows, colliding keys, footage in train and val/test). Bad inputs never raise.
    """
    out = Path(out)
    (out / ".done").mkdir(parents=True, exist_ok=True)
    items, warnings = unique_keys(list(items))
    store = SampleStore(out)
    fps = {it.key: input_fingerprint(it, opts) for it in items}
    train_input_classes = {c for it in items if it.split == "train" for c in _label_ids(it.label)}

    # (1) encode what the store does not hold for this input
    results = {it.key: store.lookup(it.key, fps[it.key]) for it in items}
    pending = [it for it in items if results[it.key] is None]
    t0 = time.time()
    if pending:
        bar = tqdm(total=len(pending), desc=f"encoding {dataset or out.name}", unit="video", disable=not progress)
        try:
            with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
                for it, r in zip(pending, pool.map(encode_item, pending, [opts] * len(pending),
                                                   [str(store.dir)] * len(pending), chunksize=1)):
                    results[it.key] = store.put(fps[it.key], r)
                    bar.update(1)
        finally:
            bar.close()
    accepted = [it for it in items if "stats" in results[it.key]]
    rejected_all = [dict(r, split=r.get("split")) for r in pre_rejected]
    rejected_all += [{"key": it.key, "path": it.path, "split": it.split, "reason": results[it.key]["rejected"]}
                     for it in items if "rejected" in results[it.key]]

    # (2) the carve, on what was encoded
    carved = carve(accepted) if carve else None
    warnings += overlap_warnings(accepted)
    stats = {it.key: results[it.key]["stats"] for it in accepted}

    # (3) shards
    by_split: dict[str, list[Item]] = {}
    for it in sorted(accepted, key=lambda i: (i.split, i.key)):
        by_split.setdefault(it.split, []).append(it)
    groups = []  # (split, base name, items, fingerprint)
    for split, its in sorted(by_split.items()):
        random.Random(f"{shuffle_seed}-{split}").shuffle(its)  # mix classes across and within shards
        for gi in range(0, len(its), samples_per_shard):
            g = its[gi:gi + samples_per_shard]
            groups.append((split, f"{sanitize_key(split)}-{gi // samples_per_shard:06d}", g,
                           _group_fingerprint(g, fps, stats)))
    done: dict[str, dict] = {}
    to_write = []
    for split, base, g, fp in groups:
        marker = out / ".done" / f"{base}.json"
        if marker.exists():
            m = json.loads(marker.read_text())
            if m.get("fingerprint") == fp and all((out / sh["name"]).exists() for sh in m["shards"]):
                done[base] = m
                continue
        to_write.append((split, base, g, fp))
    store.materialise([it.key for _, _, g, _ in to_write for it in g])
    for split, base, g, fp in to_write:
        entries = [{"key": it.key, "mp4": str(store.dir / f"{it.key}.mp4"), "json": sample_meta(it, stats[it.key])}
                   for it in g]
        shards = _write_shard_group(out, base, entries, max_shard_bytes)
        by_key = {it.key: it for it in g}
        for sh in shards:
            sh["samples"] = {k: [fps[k], stats[k]] for k in sh.pop("keys")}
        m = {"split": split, "fingerprint": fp, "shards": shards,
             "seconds": sum(stats[k]["duration"] for k in by_key)}
        _atomic_write(out / ".done" / f"{base}.json", json.dumps(m))
        done[base] = m
    store.release(stats)
    keep = {sh["name"] for m in done.values() for sh in m["shards"]}
    for old in store.old_shards - keep:  # shards of an earlier plan (other splits or sizes)
        (out / old).unlink(missing_ok=True)
    for marker in (out / ".done").glob("*.json"):
        if marker.stem not in done:
            marker.unlink()

    ncls = len(classes or [])
    manifest: dict[str, Any] = {"version": MANIFEST_VERSION, "dataset": dataset, "splits": {},
                                "classes": list(classes or []), "encode": asdict(opts), **(extra_manifest or {})}
    for split, base, g, fp in groups:
        m = done[base]
        sp = manifest["splits"].setdefault(split, {"shards": [], "shard_samples": [], "num_samples": 0, "seconds": 0.0})
        sp["shards"] += [sh["name"] for sh in m["shards"]]
        sp["shard_samples"] += [sh["num_samples"] for sh in m["shards"]]
        sp["num_samples"] += sum(sh["num_samples"] for sh in m["shards"])
        sp["seconds"] = round(sp["seconds"] + m.get("seconds", 0.0), 3)
    if ncls:
        for split, its in by_split.items():
            manifest["splits"][split]["class_counts"] = class_counts(its, ncls)
        train_counts = class_counts(by_split.get("train", []), ncls)
        manifest["classes_without_train"] = [classes[c] for c in sorted(train_input_classes)
                                             if 0 <= c < ncls and train_counts[c] == 0]
    if carved:
        manifest["val_carved"] = carved
    manifest["warnings"] = warnings
    _atomic_write(out / "rejected.jsonl", "".join(json.dumps(r) + "\n" for r in rejected_all))
    _atomic_write(out / "manifest.json", json.dumps(manifest, indent=1))
    n_ok = sum(sp["num_samples"] for sp in manifest["splits"].values())
    secs = sum(sp["seconds"] for sp in manifest["splits"].values())
    manifest["_summary"] = {"sharded": n_ok, "rejected": len(rejected_all), "wall_s": time.time() - t0,
                            "transcoded": len(pending), "video_seconds": secs}
    return manifest
