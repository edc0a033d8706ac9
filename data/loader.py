"""The training data loader: shards -> decoded clips -> batches, the same number on every rank.

Batches are dicts (B = batch size per rank, S = image size in pixels):

* pretrain: ``long`` (B, T_long, 3, S, S) float, ``short`` (B, T_short, 3, S, S) float,
  ``long_bounds`` / ``short_bounds`` (B, 2) seconds within the sample, ``label``, ``video_id``;
* train / val / windows: ``video`` (B, T, 3, S, S) float, ``bounds`` (B, 2) seconds, ``label``,
  ``video_id`` (list of B sample keys);
* and ``pass`` (B,) int64: the pass over the shards each sample was read in.

``label``: (B,) int64 class ids (-1 when unlabelled), (B,) float32 for regression, (B, C) float32
multi-hot for multi-label. Frames are normalised with the encoder's ``mean`` / ``std``.

Epochs are virtual: ``steps_per_epoch = num_samples // (batch_size * world)`` (at least 1) and
every rank yields exactly that many batches, reading its shard stream pass after pass, so no rank
runs dry. ``state_dict()`` / ``load_state_dict()`` resume mid-epoch with the same next batches;
``load_elastic_state()`` resumes from the states of all ranks of a run with another world size.
"""
from __future__ import annotations

import atexit
import functools
import logging
import os
import signal
import sys
import warnings
import weakref

import numpy as np
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from s5video.data.base import ClipLoader
from s5video.data.clips import ClipSpec, plan_clips, sample_rng, spatial_transform, split_descriptions, window_targets
from s5video.data.cpu import ShardStream, decode_video
from s5video.data.sources import deal_pieces, elastic_pieces, resolve_shards
from s5video.trainer.compat import loader_dataset_states, loader_live_iterator, loader_stop_workers

log = logging.getLogger("s5video.data")
# torchdata 0.11 calls torch.set_vital on every iterator start; torch 2.13 deprecates it (harmless)
warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)


class SampleMaker:
    """Turns one decoded video into output samples (picklable, runs in loader workers)."""

    def __init__(self, spec: ClipSpec, image_size: int, mean, std, seed: int, task: str, num_classes: int):
        self.spec, self.size, self.mean, self.std = spec, image_size, tuple(mean), tuple(std)
        self.seed, self.task, self.num_classes = seed, task, num_classes

    def label(self, meta: dict):
        y = meta.get("label")
        if self.task == "captioning":  # the class id when the dataset has one (provenance), else -1
            return torch.tensor(y if isinstance(y, int) else -1, dtype=torch.int64)
        if self.task == "multilabel":
            out = torch.zeros(self.num_classes)
            out[[y] if isinstance(y, int) else list(y or [])] = 1.0  # a single-label dataset read as multi-label
            return out
        if self.task == "regression":
            return torch.tensor(float(y), dtype=torch.float32)
        return torch.tensor(-1 if y is None else int(y), dtype=torch.int64)

    def __call__(self, key: str, data: bytes, meta: dict, epoch: int) -> list[dict]:
        """Decode ``data`` once and cut this sample's clips. When the metadata gives the frame count
        (shards from make_shards.py), the clips are planned first and only their frames are
        converted to RGB."""
        rng = sample_rng(self.seed, epoch, key)
        fps = float(meta.get("fps") or 0) or 1.0
        n = int(meta.get("num_frames") or 0)
        if n > 0:
            plans = plan_clips(self.spec, n, fps, rng)
            need = np.unique(np.concatenate([idx for p in plans for idx, _ in p.values()]))  # ascending
            frames, lookup = decode_video(data, need.tolist()), need
        else:
            frames = decode_video(data)
            plans, lookup = plan_clips(self.spec, len(frames), fps, rng), None
        outs = self.cut(key, frames, lookup, plans, meta, rng)
        for o in outs:
            o["pass"] = epoch  # which pass over the shards this sample belongs to (provenance)
        return outs

    def cut(self, key: str, frames, lookup, plans: list[dict], meta: dict, rng) -> list[dict]:
        """Samples from decoded frames ((F, H, W, 3) uint8; row i is frame ``lookup[i]`` when given)."""
        train = self.spec.mode in ("train", "pretrain")

        def clip(idx):
            rows = idx if lookup is None else np.searchsorted(lookup, idx)
            return spatial_transform(torch.from_numpy(frames[rows]), self.size, self.mean, self.std, train, rng,
                                     self.spec.crop_scale, self.spec.crop_ratio, self.spec.hflip)

        return self.assemble(key, meta, plans, clip, rng)

    def assemble(self, key: str, meta: dict, plans: list[dict], clip, rng) -> list[dict]:
        """The output dicts of one video: ``clip(indices) -> (T, 3, S, S)`` cuts each planned clip
        from the one decoded sequence; adds label, video_id and bounds (seconds).

        With ``spec.window_labels == "timed"`` (training specs only: evaluation scores whole videos)
        each clip of a multi-label video with timed ``actions`` gets the actions overlapping it (:func:`data.clips.window_targets`); a
        captioning clip gets, in training, one of the video's ``;``-separated descriptions drawn with
        the sample's ``rng`` (the same on resume), in evaluation the whole field (every reference)."""
        train = self.spec.mode in ("train", "pretrain")
        timed = self.task == "multilabel" and self.spec.window_labels == "timed" and meta.get("actions") is not None
        outs = []
        for plan in plans:
            sample = {"label": self.label(meta), "video_id": meta.get("key", key)}
            if self.task == "captioning":  # Charades' descriptions; the demo's captions per class range
                text = meta.get("descriptions") or ""
                refs = split_descriptions(text)
                sample["caption"] = refs[int(rng.integers(len(refs)))] if train else text
            if timed:
                duration = float(meta.get("duration") or 0.0) or float(plan["video"][1][1])
                sample["label"] = window_targets(meta["actions"], plan["video"][1], duration, self.num_classes)
            for name, (idx, bounds) in plan.items():
                sample[name] = clip(idx)
                sample["bounds" if name == "video" else f"{name}_bounds"] = torch.tensor(bounds, dtype=torch.float32)
            outs.append(sample)
        return outs


def _set_parent_death_signal(sig: int) -> None:
    """Linux ``prctl(PR_SET_PDEATHSIG, sig)``: the kernel sends ``sig`` to this process when its parent
    thread exits (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_PDEATHSIG = 1
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def _close_at_exit(ref) -> None:
    loader = ref()
    if loader is not None:
        loader.close()


def _worker_init(parent_pid: int, worker_id: int) -> None:
    """Decode-worker setup (``spawn``-started): die with the rank (SIGKILL on parent death, and exit
    now if the rank already died before the signal was set), and ignore the SIGTERM/SIGUSR2 that Slurm
    and ``kill -- -PGID`` send to every process - the rank saves a checkpoint on them and then stops
    its workers itself (:meth:`VideoLoader.close`)."""
    _set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(0)
    for s in (signal.SIGTERM, signal.SIGUSR2):
        signal.signal(s, signal.SIG_IGN)


def _stream_states(loader_state: dict) -> list[dict]:
    """The :class:`ShardStream` state of each reader (worker) in a ``StatefulDataLoader`` state, by worker id."""
    return loader_dataset_states(loader_state)


class VideoLoader(ClipLoader):
    """Batches of one data-parallel rank (see module docstring).

    Args:
        source: ``data.shards`` (manifest directory or pattern). split: manifest split name.
        spec: what clips to cut. batch_size: clips per rank per step. image_size: S pixels.
        mean, std: the frame encoder's normalisation. rank, world: data-parallel position.
        seed: data seed (shard order, clip positions, crops). num_workers: decode processes.
        task: ``classification`` | ``regression`` | ``multilabel``. num_classes: for multi-hot labels.
        finite: one pass over this rank's shards, every sample once, last batch possibly short
            (evaluation, feature extraction); ranks may then yield different numbers of batches.
        cache_dir, cache_gb: local cache of remote shards (http://...): fetched once, read from disk after.
    Raises ValueError / FileNotFoundError naming the bad setting.
    """

    def __init__(self, source: str, split: str, spec: ClipSpec, batch_size: int, image_size: int,
                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), rank: int = 0, world: int = 1, seed: int = 0,
                 num_workers: int = 2, task: str = "classification", num_classes: int = 0,
                 num_samples: int | None = None, finite: bool = False, cache_dir: str | None = None,
                 cache_gb: float = 100.0):
        if batch_size <= 0:
            raise ValueError(f"data.batch_size must be > 0, got {batch_size}")
        self.shards = resolve_shards(source, split, num_samples)
        self.rank, self.world, self.batch_size = rank, world, batch_size
        self.steps_per_epoch = max(1, self.shards.num_samples // (batch_size * world))
        maker = SampleMaker(spec, image_size, mean, std, seed, task, num_classes or len(self.shards.classes))
        self.finite = finite
        self.stream = ShardStream(self.shards, rank, world, seed, maker, max_passes=1 if finite else None,
                                  cache_dir=cache_dir, cache_gb=cache_gb)
        # Workers' base seed from the loader's own generator: the global torch RNG (dropout, Gumbel noise,
        # saved in checkpoints) is not advanced by starting a loader, so a resumed run draws the same noise.
        # Workers are spawned, never forked: a rank runs threads (gloo, OpenMP, TensorBoard, tqdm) and a
        # child forked from it inherits whatever locks those threads held at that instant.
        self.dl = StatefulDataLoader(self.stream, batch_size=batch_size, num_workers=num_workers,
                                     persistent_workers=num_workers > 0 and not finite, drop_last=not finite,
                                     multiprocessing_context="spawn" if num_workers > 0 else None,
                                     generator=torch.Generator().manual_seed(seed + 7919 * rank),
                                     worker_init_fn=functools.partial(_worker_init, os.getpid()))
        self.epoch, self.step = 0, 0
        self._it = None
        if num_workers > 0:  # before multiprocessing's own exit hook, which would wait on workers that ignore SIGTERM
            atexit.register(_close_at_exit, weakref.ref(self))

    @property
    def num_samples(self) -> int:
        """Videos in the split (all ranks together)."""
        return self.shards.num_samples

    def __iter__(self):
        """The rest of the current virtual epoch (all of it when started fresh); with ``finite``,
        one pass over the shards."""
        if self.finite:
            yield from self.dl
            return
        if self._it is None:
            self._it = iter(self.dl)
        while self.step < self.steps_per_epoch:
            batch = next(self._it)
            self.step += 1
            yield batch
        self.epoch, self.step = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "rank": self.rank, "world": self.world,
                "batch_size": self.batch_size, "backend": "cpu", "loader": self.dl.state_dict()}

    def load_elastic_state(self, states: list[dict]) -> None:
        """Resume from the loader states of *every* rank of a run with another world size (or other
        workers per rank). The readers' unread part of the passes in progress is dealt to this run's
        readers (:func:`data.sources.elastic_pieces`): within the interrupted pass no sample is read
        twice or skipped; later passes follow this run's world size. The virtual epoch goes on from
        the same number of samples. Bad-sample and bad-shard counts are carried by rank 0's first
        reader. Raises ValueError for another backend or a missing rank's state."""
        if any(s.get("backend", "cpu") != "cpu" for s in states):
            raise ValueError("data loader state was saved by another decode backend; resume with the same data.backend")
        old_world = states[0]["world"]
        if sorted(s["rank"] for s in states) != list(range(old_world)):
            raise ValueError(f"elastic resume needs the loader state of each of the {old_world} ranks that saved it; "
                             f"got ranks {sorted(s['rank'] for s in states)}")
        readers, old_workers = [], 1
        for s in states:
            workers = _stream_states(s["loader"])
            old_workers = len(workers)
            readers += [(s["rank"], w, st) for w, st in enumerate(workers)]
        pieces, next_pass = elastic_pieces(readers, old_world, old_workers, len(self.shards.urls), self.stream.seed)
        workers = max(1, self.dl.num_workers)
        queues = deal_pieces(pieces, self.world * workers, self.shards.counts)
        starts = {}
        for w in range(workers):  # ShardStream states: the queue's first piece, or the next pass
            queue = queues[self.rank * workers + w]
            if queue:
                p, _, sample, output = queue[0]
                starts[w] = {"pass": p, "shard": 0, "sample": sample, "output": output, "queue": queue,
                             "next_pass": next_pass}
            else:
                starts[w] = {"pass": next_pass, "shard": 0, "sample": 0, "output": 0}
            starts[w].update(bad=0, bad_keys=[])
        if self.rank == 0:  # the old readers' counts, once
            for key in ("bad", "bad_shards"):
                starts[0][key] = sum(int(st.get(key, 0)) for _, _, st in readers)
        self.stream.start_states = starts
        consumed = states[0]["step"] * states[0].get("batch_size", self.batch_size) * old_world  # this virtual epoch
        self.epoch, self.step = states[0]["epoch"], consumed // (self.batch_size * self.world)
        if self.step >= self.steps_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0
        self._it = None

    def load_state_dict(self, state: dict) -> None:
        if state["world"] != self.world:
            raise ValueError(f"data loader state was saved with {state['world']} data-parallel ranks, this run has "
                             f"{self.world}: resuming would replay or skip samples; refusing")
        if state.get("backend", "cpu") != "cpu":
            raise ValueError("data loader state was saved by another decode backend; resume with the same data.backend")
        if state["rank"] != self.rank:
            raise ValueError(f"data loader state of rank {state['rank']} loaded on rank {self.rank}")
        self.epoch, self.step = state["epoch"], state["step"]
        self.dl.load_state_dict(state["loader"])
        self._it = None

    def close(self, timeout: float = 10.0) -> None:
        """Stop the decode workers now (idempotent): the loader's own shutdown (a sentinel to each worker,
        joined for a few seconds), then SIGKILL for any worker still alive, then join. After this the
        process has no decode worker left for interpreter exit to wait on. A worker that dies while it
        is being stopped (seen: a native decode thread aborting at the worker's exit, which the
        loader's SIGCHLD handler turns into a RuntimeError here) is logged, not raised: stopping it
        was the point, and its batches were not going to be used."""
        workers = []
        try:
            workers = loader_stop_workers(self.dl)
        except RuntimeError as e:
            log.warning("rank %d: a decode worker died while being stopped (%s)", self.rank, e)
        for w in workers:
            if w.is_alive():
                w.kill()
            w.join(timeout)
        self._it = None

    def bad_samples(self) -> int:
        """Bad samples skipped so far by this rank's workers (as of the last state snapshot); 0 before
        the first batch (asking the loader for its state would start its workers)."""
        return self._workers_sum("bad")

    def bad_shards(self) -> int:
        """Shards this rank's workers skipped after every retry failed (unreachable, HTTP errors)."""
        return self._workers_sum("bad_shards")

    def _workers_sum(self, key: str) -> int:
        if loader_live_iterator(self.dl) is None and self._it is None:
            return int(self.stream.state_dict().get(key, 0))
        states = loader_dataset_states(self.dl.state_dict()) or [self.stream.state_dict()]
        return sum(int(s.get(key, 0)) for s in states)
