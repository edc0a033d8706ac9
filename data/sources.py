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
from dataclasses import dataclass, field

import braceexpand

log = logging.getLogger(__name__)


@dataclass
class ShardSet:
    """The shards of one split: ``urls`` (paths or URLs), per-shard sample counts (or None when
    unknown), total ``num_samples``, ``classes`` and the manifest (or {})."""

    urls: list[str]
    counts: list[int] | None
    num_samples: int
    classes: list[str] = field(default_factory=list)
    manifest: dict = field(default_factory=dict)


def resolve_shards(source: str, split: str, num_samples: int | None = None) -> ShardSet:
    """Resolve ``source`` for ``split``. Raises FileNotFoundError / ValueError with the reason."""
    if not source:
        raise ValueError("data.shards: empty; point it at a make_shards.py output directory or a shard pattern")
    if os.path.isdir(source):
        mpath = os.path.join(source, "manifest.json")
        if not os.path.exists(mpath):
            raise FileNotFoundError(f"data.shards: {source} has no manifest.json (is it a make_shards.py output?)")
        manifest = json.load(open(mpath))
        splits = manifest.get("splits", {})
        if split not in splits:
            raise ValueError(f"split {split!r} not in {mpath}; available splits: {', '.join(sorted(splits))}")
        sp = splits[split]
        urls = [os.path.join(source, s) for s in sp["shards"]]
        counts = sp.get("shard_samples")
        if counts is not None and 0 in counts:  # an empty shard would leave its reader without data
            empty = [os.path.basename(u) for u, n in zip(urls, counts) if n == 0]
            log.warning("data.shards: skipping %d empty shard(s) of split %r: %s", len(empty), split, ", ".join(empty))
            urls, counts = [u for u, n in zip(urls, counts) if n], [n for n in counts if n]
        if not urls or int(sp["num_samples"]) == 0:
            raise ValueError(f"split {split!r} of {mpath} has no samples; re-run make_shards.py or pick another split")
        return ShardSet(urls, counts, int(sp["num_samples"]), manifest.get("classes", []), manifest)
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
