"""Where shards come from and which rank/worker reads which shard in which epoch.

A shard source is one of:

* a directory written by ``tools/make_shards.py`` (its ``manifest.json`` gives the shards of each
  split, their sample counts and the classes);
* a brace pattern or list of tar paths/URLs (``/data/train-{000000..000099}.tar``), a ``pipe:``
  command, or an fsspec URL (``s3://bucket/train-{0..9}.tar``; opened through webdataset's
  ``gopen``). Without a manifest, pass ``num_samples``.

:func:`assign_shards` is a pure function of (seed, epoch, rank, world, worker, workers): the shard
order is shuffled with ``seed + epoch``, split by rank, then by worker. When there are fewer shards
than ranks x workers, every reader instead draws its shards with replacement (resampling), so no
reader is ever left without data.
"""
from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import dataclass, field

import braceexpand

log = logging.getLogger(__name__)
FETCH_BACKOFF_S = (1, 2, 4, 8, 16)  # waits between tries of a remote file: 31 s in all, past a 20-s outage


@dataclass
class ShardSet:
    """The shards of one split: ``urls`` (paths or URLs), per-shard sample counts (or None when
    unknown), total ``num_samples``, ``classes`` and the manifest (or {})."""

    urls: list[str]
    counts: list[int] | None
    num_samples: int
    classes: list[str] = field(default_factory=list)
    manifest: dict = field(default_factory=dict)


def read_manifest(source: str) -> dict:
    """``manifest.json`` of a make_shards output: a local directory, or a URL of one (``http://host/dir/``,
    any fsspec URL). Raises FileNotFoundError (no manifest) or ValueError (not JSON)."""
    if "://" not in source:
        mpath = os.path.join(source, "manifest.json")
        if not os.path.exists(mpath):
            raise FileNotFoundError(f"data.shards: {source} has no manifest.json (is it a make_shards.py output?)")
        return json.load(open(mpath))
    url = source.rstrip("/") + "/manifest.json"
    if url.startswith(("http://", "https://")):  # the standard library: no fsspec HTTP extras needed
        import urllib.error
        import urllib.request
        for wait in (*FETCH_BACKOFF_S, None):
            try:
                with urllib.request.urlopen(url, timeout=60) as r:
                    return json.loads(r.read())
            except urllib.error.HTTPError as e:
                if e.code in (404, 410):
                    raise FileNotFoundError(f"data.shards: {url} not found (is {source} a make_shards.py output?)") \
                        from None
                error = f"HTTP {e.code} {e.reason}"
            except OSError as e:  # refused, reset, timed out: the server may come back
                error = str(getattr(e, "reason", e))
            if wait is None:
                raise ConnectionError(f"data.shards: {url}: {error} (after {len(FETCH_BACKOFF_S) + 1} tries)")
            log.warning("data.shards: %s: %s; retrying in %d s", url, error, wait)
            time.sleep(wait)
    import fsspec
    try:
        with fsspec.open(url, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise FileNotFoundError(f"data.shards: {url} not found (is {source} a make_shards.py output?)") from None


def resolve_shards(source: str, split: str, num_samples: int | None = None) -> ShardSet:
    """Resolve ``source`` for ``split`` (``a+b`` joins splits, e.g. Kinetics ``train+test`` for LSMCL).
    Raises FileNotFoundError / ValueError with the reason."""
    if not source:
        raise ValueError("data.shards: empty; point it at a make_shards.py output directory or a shard pattern")
    if os.path.isdir(source) or "://" in source and not any(c in source for c in "{}") and not source.endswith(".tar"):
        manifest = read_manifest(source)
        splits = manifest.get("splits", {})
        urls, counts = [], []
        for part in split.split("+"):
            if part not in splits:
                raise ValueError(f"split {part!r} not in {source}/manifest.json; available splits: "
                                 f"{', '.join(sorted(splits))}")
            sp = splits[part]
            if not int(sp["num_samples"]):
                raise ValueError(f"split {part!r} of {source} has no samples; re-run make_shards.py or pick another split")
            part_urls = [source.rstrip("/") + "/" + s if "://" in source else os.path.join(source, s) for s in sp["shards"]]
            part_counts = sp.get("shard_samples") or [None] * len(part_urls)
            if 0 in part_counts:  # an empty shard would leave its reader without data
                empty = [os.path.basename(u) for u, n in zip(part_urls, part_counts) if n == 0]
                log.warning("data.shards: skipping %d empty shard(s) of split %r: %s", len(empty), part, ", ".join(empty))
            urls += [u for u, n in zip(part_urls, part_counts) if n != 0]
            counts += [n for n in part_counts if n != 0]
        total = sum(int(splits[p]["num_samples"]) for p in split.split("+"))
        return ShardSet(urls, counts if None not in counts else None, total, manifest.get("classes", []), manifest)
    urls = []
    for part in source.split("::"):
        urls += list(braceexpand.braceexpand(part))
    if num_samples is None:
        raise ValueError(f"data.shards: {source!r} has no manifest; the number of samples must be given")
    return ShardSet(urls, None, num_samples)


def assign_shards(num_shards: int, seed: int, epoch: int, rank: int, world: int, worker: int, workers: int,
                  min_shards: int = 1) -> list[int]:
    """Shard indices this (rank, worker) reads in ``epoch``, in reading order.

    With at least ``world * workers`` shards: a permutation seeded by ``seed + epoch`` is dealt
    round-robin to ranks, then to workers; readers differ by at most one shard. With fewer shards:
    each reader draws ``max(min_shards, 1)`` shards with replacement from its own seeded RNG.
    """
    if num_shards <= 0:
        raise ValueError("no shards to read")
    order = list(range(num_shards))
    random.Random(seed + epoch).shuffle(order)
    readers = world * workers
    if num_shards >= readers:
        mine = order[rank::world]
        return mine[worker::workers]
    rng = random.Random(f"{seed}-{epoch}-{rank}-{worker}")
    return [rng.randrange(num_shards) for _ in range(max(1, min_shards))]


def reader_entries(state: dict, num_shards: int, seed: int, rank: int, world: int, worker: int,
                   workers: int) -> list[tuple[int, int]]:
    """``(pass, shard)`` a reader reads in its current list: its elastic ``queue`` when the state has
    one, else its :func:`assign_shards` share of ``state["pass"]``."""
    if state.get("queue"):
        return [(p, idx) for p, idx, *_ in state["queue"]]
    return [(state["pass"], idx) for idx in assign_shards(num_shards, seed, state["pass"], rank, world, worker, workers)]


def reader_remainder(state: dict, num_shards: int, seed: int, rank: int, world: int, worker: int, workers: int,
                     upto_pass: int) -> list[list[int]]:
    """What one reader of a stopped run had still to read, up to and including ``upto_pass``, as
    pieces ``[pass, shard, first sample, first output]`` in its reading order: the rest of the entry
    it was reading, the rest of its list (an elastic queue, or its :func:`assign_shards` share of the
    pass), then its whole share of every later pass up to ``upto_pass``. ``state``: the reader's
    :class:`data.cpu.ShardStream` state; (rank, world, worker, workers): its place in that run."""
    pieces, queue = [], state.get("queue")
    entries = reader_entries(state, num_shards, seed, rank, world, worker, workers)
    first_normal = state["next_pass"] if queue else state["pass"] + 1
    for i in range(state["shard"], len(entries)):
        p, idx = entries[i]
        start = (state["sample"], state["output"]) if i == state["shard"] else tuple(queue[i][2:4]) if queue else (0, 0)
        pieces.append([p, idx, *start])
    for p in range(first_normal, upto_pass + 1):
        pieces += [[p, idx, 0, 0] for idx in assign_shards(num_shards, seed, p, rank, world, worker, workers)]
    return pieces


def elastic_pieces(readers: list[tuple[int, int, dict]], world: int, workers: int, num_shards: int,
                   seed: int) -> tuple[list[list[int]], int]:
    """The unread part of a stopped run's passes in progress, to be read by a run of any size.

    ``readers``: ``(rank, worker, ShardStream state)`` of *every* reader of the stopped run, which had
    ``world`` ranks x ``workers`` workers. Returns (``pieces``: what any reader still had to read of
    the passes up to the last one any reader had started (:func:`reader_remainder`), ordered by pass,
    then old reader; ``next_pass``: the first pass nobody had started). A new run deals the pieces to
    its readers (:func:`deal_pieces`) and reads each once, then goes on with ``next_pass`` under its
    own world size: within the interrupted pass no sample is read twice or skipped. The principle is
    MosaicML streaming's: the sample order belongs to the data, not to the ranks."""
    def frontier(st: dict) -> int:  # the last pass this reader has started
        return st["next_pass"] - 1 if st.get("queue") else st["pass"]

    upto = max(frontier(st) for _, _, st in readers)
    pieces = []
    for rank, worker, st in sorted(readers, key=lambda r: (r[0], r[1])):
        pieces += reader_remainder(st, num_shards, seed, rank, world, worker, workers, upto)
    pieces.sort(key=lambda p: p[0])  # stable: within a pass, old reader order
    return pieces, upto + 1


def deal_pieces(pieces: list[list[int]], readers: int, counts: list[int] | None) -> list[list[list[int]]]:
    """Deal ``pieces`` (``[pass, shard, first sample, first output]``) to ``readers`` queues: each piece
    in turn to the queue with the fewest samples so far (sample counts from the manifest, else one
    per piece; ties to the lowest index), keeping each queue in the pieces' order."""
    queues, load = [[] for _ in range(readers)], [0] * readers
    for piece in pieces:
        i = min(range(readers), key=lambda j: (load[j], j))
        queues[i].append(piece)
        load[i] += max(1, counts[piece[1]] - piece[2]) if counts else 1
    return queues
