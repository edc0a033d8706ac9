"""CPU decode backend: webdataset tar reading + PyAV (FFmpeg) decoding, any codec.

:class:`ShardStream` is an endless, resumable stream of training samples for one data-parallel
rank; each DataLoader worker reads the shards :func:`data.sources.assign_shards` gives it, pass
after pass. Its ``state_dict()`` (pass, shard position, samples consumed in the shard, outputs
consumed of the current sample, bad-sample count) is what torchdata's ``StatefulDataLoader``
snapshots per worker, so a resumed loader yields exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Callable, Iterator

import av
import numpy as np
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from s5video.data.sources import FETCH_BACKOFF_S, ShardSet, reader_entries

log = logging.getLogger("s5video.data")


def decode_video(data: bytes, indices: list[int] | None = None) -> np.ndarray:
    """Decode an in-memory video with PyAV: uint8 (F, H, W, 3) RGB of every frame, or, with
    ``indices`` (ascending, distinct), (len(indices), H, W, 3) of those frames only: every frame is
    still decoded (the codec needs it) but only the wanted ones are converted to RGB.
    Raises ValueError when no frame decodes or a wanted index is past the end."""
    want = None if indices is None else set(indices)
    out = []
    with av.open(io.BytesIO(data)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        for i, f in enumerate(c.decode(stream)):
            if want is None or i in want:
                out.append(f.to_ndarray(format="rgb24"))
            if want is not None and len(out) == len(want):
                break
    if not out:
        raise ValueError("no frame decoded")
    if want is not None and len(out) != len(want):
        raise ValueError(f"video has fewer frames than its metadata says (wanted frame {max(want)})")
    return np.stack(out)


FETCH_TIMEOUT_S = 60  # no byte for this long: the transfer has failed


def iter_shard(url: str, cache_dir: str | None = None, cache_gb: float = 100.0) -> Iterator[dict]:
    """Samples of one tar shard in file order, as webdataset dicts (``__key__``, ``mp4``, ``json``).

    An http(s) ``url`` is fetched whole first (:func:`fetch_shard`) into ``cache_dir`` (kept for
    later passes) or, without one, a temporary file removed after the pass; other remote URLs
    (s3://, pipe:) go through webdataset's own ``FileCache`` with ``cache_dir``, or stream.
    Raises OSError when the shard cannot be fetched."""
    tmp = None
    if url.startswith(("http://", "https://")):
        if cache_dir:
            url = fetch_shard(url, cache_dir, cache_gb)
        else:
            tmp = tempfile.mkdtemp(prefix="s5video-shard-")
            url = fetch_shard(url, tmp, None)
    elif cache_dir and "://" in url:
        url = _file_cache(cache_dir, cache_gb).get_file(url)
    try:
        yield from wds.WebDataset(url, shardshuffle=False, empty_check=False, nodesplitter=None,
                                  workersplitter=None, handler=wds.warn_and_continue)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def fetch_shard(url: str, cache_dir: str, cache_gb: float | None) -> str:
    """Local path of the http(s) shard ``url`` in ``cache_dir``, downloading it if absent: to a
    per-process temporary name, checked against the server's Content-Length, then renamed, so a
    dropped connection leaves nothing and ranks/workers on one node share the file. Above
    ``cache_gb`` GB the oldest files are removed first (webdataset's ``LRUCleanup``).
    Raises FileNotFoundError (HTTP 404/410: permanent), OSError (other HTTP error status,
    refused/dropped connection, short body, timeout: worth retrying)."""
    import http.client
    import urllib.error
    import urllib.request

    dest = os.path.join(cache_dir, cache_name(url))
    if os.path.exists(dest):
        return dest
    os.makedirs(cache_dir, exist_ok=True)
    if cache_gb is not None:
        wds.cache.LRUCleanup(cache_dir, int(cache_gb * 1e9), interval=None).cleanup()
    tmp = f"{dest}.part{os.getpid()}"
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as r, open(tmp, "wb") as f:
            size = int(r.headers.get("Content-Length") or -1)
            shutil.copyfileobj(r, f, 1 << 20)
            got = f.tell()
        if size >= 0 and got != size:
            raise OSError(f"{url}: connection closed after {got} of {size} bytes")
        os.replace(tmp, dest)
    except urllib.error.HTTPError as e:
        if e.code in (404, 410):  # permanent: not retried
            raise FileNotFoundError(f"{url}: HTTP {e.code} {e.reason}") from None
        raise OSError(f"{url}: HTTP {e.code} {e.reason}") from None
    except http.client.HTTPException as e:  # e.g. IncompleteRead: the body was cut
        raise OSError(f"{url}: {type(e).__name__}: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


def cache_name(url: str) -> str:
    """Flat cache file name of a shard URL: a hash of its directory + its file name, so shards of
    the same name from two sources never collide."""
    base, _, name = url.rpartition("/")
    return f"{hashlib.sha1(base.encode()).hexdigest()[:12]}-{name}"


@functools.lru_cache(maxsize=None)
def _file_cache(cache_dir: str, cache_gb: float) -> wds.cache.FileCache:
    os.makedirs(cache_dir, exist_ok=True)
    return wds.cache.FileCache(cache_dir, url_to_name=cache_name, cache_size=int(cache_gb * 1e9))


class ShardStream(IterableDataset):
    """Endless stream of processed samples for one rank.

    Args:
        shards: the split's :class:`ShardSet`. rank, world: data-parallel position.
        seed: shuffling seed. make_samples: ``(key, video bytes, meta, pass) -> list of sample
        dicts`` (decoder, clip sampler and transforms); any exception marks the sample bad.
        max_passes: stop after this many passes over the shards (None: endless; 1: evaluation).
        cache_dir, cache_gb: local cache of remote shards (:func:`iter_shard`).

    A shard that cannot be fetched, or that ends before the manifest's sample count (a dropped
    connection mid-stream), is retried from where it stopped after 1, 2, 4, 8, 16 s; then it is
    logged and counted (``bad_shards`` in the state) and the stream goes on with the next shard.
    """

    def __init__(self, shards: ShardSet, rank: int, world: int, seed: int,
                 make_samples: Callable[[str, bytes, dict, int], list[dict]], max_passes: int | None = None,
                 cache_dir: str | None = None, cache_gb: float = 100.0):
        self.shards, self.rank, self.world, self.seed = shards, rank, world, seed
        self.make_samples, self.max_passes = make_samples, max_passes
        self.cache = {"cache_dir": cache_dir, "cache_gb": cache_gb}
        self.produced = False  # an output was yielded in the current pass
        self._state = {"pass": 0, "shard": 0, "sample": 0, "output": 0, "bad": 0, "bad_keys": []}
        self.start_states: dict[int, dict] | None = None  # per worker id: where to start (elastic resume)

    def state_dict(self) -> dict:
        st = self._state
        if self.start_states is not None:  # an elastic start not yet begun: that is this reader's position
            wi = get_worker_info()
            st = self.start_states[wi.id if wi is not None else 0]
        return dict(st, bad_keys=list(st["bad_keys"][-20:]))

    def _read_shard(self, url: str):
        """Yield the outputs of ``url``'s samples from the state's position on (resume or retry:
        samples already consumed are skipped); sets ``self.produced`` once one is yielded."""
        st = self._state
        for i, raw in enumerate(iter_shard(url, **self.cache)):
            if i < st["sample"]:
                continue  # resume: already consumed
            key = raw.get("__key__", f"{url}#{i}")
            try:
                meta = json.loads(raw["json"])
                outs = self.make_samples(key, raw["mp4"], meta, st["pass"])
            except Exception as e:  # a bad sample is counted, logged and skipped
                st["bad"] += 1
                st["bad_keys"] = (st["bad_keys"] + [key])[-20:]
                log.warning("skipping bad sample %s in %s: %s: %s", key, url, type(e).__name__, e)
                outs = []
            for j in range(st["output"], len(outs)):
                st["output"] = j + 1
                if j + 1 == len(outs):
                    st["sample"], st["output"] = i + 1, 0
                self.produced = True
                yield outs[j]
            if not outs or st["output"] == 0:
                st["sample"], st["output"] = i + 1, 0

    def load_state_dict(self, state: dict) -> None:
        self._state = dict(state)

    def __iter__(self) -> Iterator[dict]:
        """Samples pass after pass. A state with a ``queue`` (``[pass, shard, first sample, first
        output]`` pieces, from an elastic resume: :func:`data.sources.elastic_pieces`) reads those
        first, then passes from ``next_pass`` on."""
        wi = get_worker_info()
        worker, workers = (wi.id, wi.num_workers) if wi is not None else (0, 1)
        if self.start_states is not None:
            self._state, self.start_states = dict(self.start_states[worker]), None
        st = self._state
        empty_passes = 0
        while True:
            queue = st.get("queue")
            entries = reader_entries(st, len(self.shards.urls), self.seed, self.rank, self.world, worker, workers)
            self.produced = False
            while st["shard"] < len(entries):
                st["pass"], idx = entries[st["shard"]]
                url, expected = self.shards.urls[idx], self.shards.counts[idx] if self.shards.counts else None
                for attempt in range(len(FETCH_BACKOFF_S) + 1):
                    error, permanent = None, False
                    try:
                        yield from self._read_shard(url)
                    except OSError as e:  # could not fetch/open the shard
                        error, permanent = f"{type(e).__name__}: {e}", isinstance(e, FileNotFoundError)  # 404
                    if error is None and (expected is None or st["sample"] >= expected):
                        break
                    # a shard that failed or ended before the manifest's sample count: retry where it stopped
                    error = error or f"ended after {st['sample']} of {expected} samples"
                    if permanent or attempt == len(FETCH_BACKOFF_S):
                        st["bad_shards"] = st.get("bad_shards", 0) + 1
                        log.error("skipping shard %s after %d tries (%s); %d bad shard(s) so far on this reader",
                                  url, attempt + 1, error, st["bad_shards"])
                        break
                    log.warning("shard %s: %s; retrying in %d s", url, error, FETCH_BACKOFF_S[attempt])
                    time.sleep(FETCH_BACKOFF_S[attempt])
                st["shard"] += 1
                st["sample"], st["output"] = queue[st["shard"]][2:4] if queue and st["shard"] < len(queue) else (0, 0)
            if queue:  # the elastic queue is read: normal passes from here on
                st["pass"], st["shard"], st["sample"], st["output"] = st.pop("next_pass"), 0, 0, 0
                del st["queue"]
                continue
            st["pass"], st["shard"], st["sample"], st["output"] = st["pass"] + 1, 0, 0, 0
            if self.max_passes is not None and st["pass"] >= self.max_passes:
                return
            empty_passes = 0 if self.produced else empty_passes + 1
            if empty_passes >= 3:
                raise RuntimeError(f"rank {self.rank} worker {worker}: 3 passes over its shards produced no "
                                   f"valid sample ({st['bad']} bad samples); check the shards")
