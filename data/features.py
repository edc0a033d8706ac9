"""Frozen-feature cache with FFCV: run the frozen encoder once, train the decoder for hundreds of
epochs on the cached tokens (ViS4mer-style finetuning) instead of decoding and encoding every epoch.

A cache is a directory (``data.features``) with one ``<split>.beton`` per split the run reads
(:func:`feature_path`), written by ``tools/extract_features.py``: val/test hold exactly the clips
the video path evaluates (the config's windows, centre or full clip), train its windows at a
stride (default: non-overlapping, ``data.clip_seconds``) - each window one training example - or,
with ``data.sampling: segments``, every segment of every video, T of which the reader draws per
video and epoch.

Writer (:func:`write_feature_cache`): one record per clip or window with fields ``tokens``
(T*P, D) float16 (stored as its int16 bits), ``label`` (int64 class id, float target, or
multi-hot float32 (C,)), ``video`` (int index into the sidecar ``<file>.videos.json``) and
``bounds`` (2,) float32 seconds; ``<file>.json`` records the token shape and how the clips were cut,
``<file>.captions.json`` (captioning) each video's reference caption.
Reader (:class:`FeatureLoader`): ffcv's ``Loader`` with a rank-aware order, yielding the trainer's
batch dicts with ``tokens`` (B, T*P, D) float32 instead of ``video``.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Iterable, Iterator

import numpy as np
import torch


from s5video.data.base import ClipLoader
from s5video.data.clips import sample_rng, split_descriptions

def feature_path(root: str, split: str) -> str:
    """The cache file of ``split`` in the cache directory ``root``."""
    return os.path.join(root, f"{split}.beton")


def write_feature_cache(records: Iterable[dict], path: str, num_tokens: int, dim: int, label_shape: tuple = (),
                        label_dtype=np.int64, num_workers: int = 1, meta: dict | None = None) -> int:
    """Write records ``{"tokens": (num_tokens, dim), "label", "video_id": str, "bounds": (2,)}`` (+ an
    optional ``"caption"``: the video's reference text) to the FFCV file ``path`` (+ ``path.videos.json``,
    ``path.captions.json`` when records carry captions, and ``path.json`` = ``meta`` + the token shape).
    Tokens are staged in a float16 memmap first, so memory stays bounded. Returns the number of records."""
    from ffcv.fields import FloatField, IntField, NDArrayField
    from ffcv.writer import DatasetWriter

    tmpdir = tempfile.mkdtemp(prefix=".features-", dir=os.path.dirname(os.path.abspath(path)) or ".")
    cap, n = 1024, 0
    mm = np.lib.format.open_memmap(os.path.join(tmpdir, "tok.npy"), "w+", np.float16, (cap, num_tokens, dim))
    labels, vids, bounds, video_ids, captions = [], [], [], {}, {}
    for r in records:
        if n == cap:  # grow the staging file
            cap *= 2
            old = mm
            mm = np.lib.format.open_memmap(os.path.join(tmpdir, f"tok{cap}.npy"), "w+", np.float16, (cap, num_tokens, dim))
            mm[:n] = old[:n]
            del old
        mm[n] = np.asarray(r["tokens"], dtype=np.float16)
        labels.append(np.asarray(r["label"], dtype=label_dtype))
        vids.append(video_ids.setdefault(r["video_id"], len(video_ids)))
        bounds.append(np.asarray(r["bounds"], dtype=np.float32))
        if "caption" in r:  # captioning: one reference text per video
            captions[r["video_id"]] = r["caption"]
        n += 1
    mm.flush()

    class _Staged:
        def __len__(self):
            return n

        def __getitem__(self, i):
            return np.ascontiguousarray(mm[i]).view(np.int16), labels[i], vids[i], bounds[i]

    label_field = IntField() if label_shape == () and label_dtype == np.int64 else (
        FloatField() if label_shape == () else NDArrayField(np.dtype(label_dtype), label_shape))
    # float16 bit patterns stored as int16: ffcv's numba-compiled pipeline has no float16 type
    fields = {"tokens": NDArrayField(np.dtype("int16"), (num_tokens, dim)), "label": label_field,
              "video": IntField(), "bounds": NDArrayField(np.dtype("float32"), (2,))}
    DatasetWriter(path, fields, num_workers=num_workers).from_indexed_dataset(_Staged())
    with open(path + ".videos.json", "w") as f:
        json.dump(sorted(video_ids, key=video_ids.get), f)
    if captions:
        with open(path + ".captions.json", "w") as f:
            json.dump(captions, f)
    if (meta or {}).get("clips") == "all_segments":  # the loader draws each video's segments by record
        np.save(path + ".record_video.npy", np.asarray(vids, dtype=np.int32))
    with open(path + ".json", "w") as f:
        json.dump({**(meta or {}), "num_tokens": num_tokens, "dim": dim, "records": n, "videos": len(video_ids)}, f)
    for p in os.listdir(tmpdir):
        os.unlink(os.path.join(tmpdir, p))
    os.rmdir(tmpdir)
    return n


def _pick(text: str, rng) -> str:
    refs = split_descriptions(text)
    return refs[int(rng.integers(len(refs)))]


def _order(sample_order):
    """An ffcv traversal order whose ``sample_order(epoch)`` is ``sample_order(epoch, indices)``
    (``indices``: every record of the file), with an ``overrides`` dict (epoch -> records) for the
    caller.

    ffcv 1.0.2's Loader accepts a custom order only as an *instance* of TraversalOrder, which it then
    calls with the loader (it tests ``isinstance`` where a class is meant), hence the factory."""
    from ffcv.traversal_order.base import TraversalOrder

    class Order(TraversalOrder):
        def sample_order(self, epoch: int):
            return sample_order(epoch, self.indices)

    class Factory(TraversalOrder):
        def __init__(self):  # no loader yet
            pass

        def __call__(self, loader):
            return Order(loader)

        def sample_order(self, epoch: int):
            raise NotImplementedError

    factory = Factory()
    factory.overrides = {}
    return factory


def _rank_order(seed: int, rank: int, world: int, shuffle: bool, equal: bool):
    """An ffcv traversal order: each epoch a permutation of all records (seeded by seed + epoch, or
    file order), dealt round-robin to ranks; with ``equal`` every rank gets N // world records
    (training: the same number of steps everywhere), else every record goes to exactly one rank.
    ``overrides`` (epoch -> this rank's records) is set by FeatureLoader.load_elastic_state."""
    def sample_order(epoch: int, indices: np.ndarray) -> np.ndarray:
        if epoch in factory.overrides:  # an elastic resume's share of the interrupted epoch
            return factory.overrides[epoch]
        mine = epoch_order(indices, seed, epoch, shuffle)[rank::world]
        return mine[:len(indices) // world] if equal else mine

    factory = _order(sample_order)
    return factory


def _segment_order(records_of: list[np.ndarray], video_ids: list[str], count: int, seed: int, rank: int,
                   world: int, shuffle: bool):
    """An ffcv traversal order over a cache of single segments (``all_segments``): each epoch the
    videos in a seeded permutation, dealt round-robin to ranks in equal shares, and for each video
    the records of its ``count`` segments drawn by :func:`data.clips.segment_indices` (a training
    draw: a random sorted sample from ``sample_rng(seed, epoch, video)``, as the video path draws
    it), so every ``count`` consecutive records are one training example. ``overrides`` (epoch ->
    this rank's *video* indices) is set by FeatureLoader.load_elastic_state."""
    from s5video.data.clips import sample_rng, segment_indices

    def sample_order(epoch: int, indices: np.ndarray) -> np.ndarray:
        if epoch in factory.overrides:  # an elastic resume's share of the interrupted epoch
            videos = factory.overrides[epoch]
        else:
            videos = epoch_order(np.arange(len(records_of)), seed, epoch, shuffle)[rank::world]
            videos = videos[:len(records_of) // world]
        return np.concatenate([records_of[v][segment_indices(len(records_of[v]), count, True,
                                                              sample_rng(seed, epoch, video_ids[v]))]
                               for v in videos]) if len(videos) else np.zeros(0, dtype=np.int64)

    factory = _order(sample_order)
    return factory


def epoch_order(indices: np.ndarray, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """All records in the order of ``epoch`` (seeded permutation, or file order), before ranks split it."""
    return np.random.default_rng(seed + epoch).permutation(indices) if shuffle else np.asarray(indices)


class FeatureLoader(ClipLoader):
    """Batches of one rank from a cache file: ``tokens`` (B, T*P, D) float32, ``label``, ``video_id``
    (list of B), ``bounds`` (B, 2) seconds, and ``caption`` (list of B) when the cache has captions:
    in training one of the video's ``;``-separated descriptions per clip (seeded by seed, epoch, clip),
    in evaluation the whole field. A cache of single segments (``tools/extract_features.py``
    with ``data.sampling: segments``) yields each video once per epoch as T = ``frames`` of its
    segments, drawn afresh each epoch (:func:`_segment_order`).

    Args:
        path: a ``<split>.beton`` (:func:`feature_path`). batch_size: records per rank per step.
        shuffle: reshuffle all records each epoch (seeded). seed: shuffling seed. rank, world: the
            data-parallel position. finite: evaluation - every record once over all ranks, last batch
            short (ranks may differ by one batch); else equal shares and full batches, epoch after epoch.
    ``state_dict()`` / ``load_state_dict()`` resume mid-epoch with the same next batches;
    ``load_elastic_state()`` resumes from the states of all ranks of a run with another world size.
    Raises FileNotFoundError (no cache) / ValueError (a state of another world size).
    """

    def __init__(self, path: str, batch_size: int, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world: int = 1, finite: bool = False, num_workers: int = 1):
        from ffcv.fields.decoders import FloatDecoder, IntDecoder, NDArrayDecoder
        from ffcv.loader import Loader
        from ffcv.reader import Reader
        from ffcv.transforms import ToTensor

        from s5video.trainer.compat import quiet_numba_finalizer

        if not os.path.exists(path):
            raise FileNotFoundError(f"data.features: {path} does not exist (write it with tools/extract_features.py)")
        quiet_numba_finalizer()  # ffcv's compiled pipelines: a harmless KeyError report at each collection
        self.video_ids = json.load(open(path + ".videos.json"))
        self.meta = json.load(open(path + ".json")) if os.path.exists(path + ".json") else {}
        self.captions = json.load(open(path + ".captions.json")) if os.path.exists(path + ".captions.json") else None
        reader = Reader(path)
        self.num_samples = int(reader.num_samples)
        label_dec = {"FloatField": FloatDecoder, "NDArrayField": NDArrayDecoder}.get(
            type(reader.handlers["label"]).__name__, IntDecoder)()
        self.rank, self.world, self.finite = rank, world, finite
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.segments = 0  # a cache of single segments: each example is `frames` of one video's records
        if self.meta.get("clips") == "all_segments":
            if finite:
                raise ValueError(f"data.features: {path} holds single segments (a training cache of "
                                 "data.sampling=segments); evaluation reads the val/test caches")
            self.segments = int(self.meta["frames"])
            owner = np.load(path + ".record_video.npy")  # (records,) video index of each record
            by_video = np.argsort(owner, kind="stable")
            bounds = np.searchsorted(owner[by_video], np.arange(len(self.video_ids) + 1))
            records_of = [by_video[bounds[v]:bounds[v + 1]] for v in range(len(self.video_ids))]
            self.num_samples = len(self.video_ids)
            self.order = _segment_order(records_of, self.video_ids, self.segments, seed, rank, world, shuffle)
        else:
            self.order = _rank_order(seed, rank, world, shuffle, equal=not finite)
        self.loader = Loader(path, batch_size=batch_size * max(1, self.segments), num_workers=num_workers,
                             drop_last=not finite,
                             order=self.order,
                             pipelines={"tokens": [NDArrayDecoder(), ToTensor()], "label": [label_dec, ToTensor()],
                                        "video": [IntDecoder(), ToTensor()], "bounds": [NDArrayDecoder(), ToTensor()]})
        self.steps_per_epoch = len(self.loader)
        self.epoch, self.step = 0, 0

    def __iter__(self) -> Iterator[dict]:
        """The rest of the current epoch (all of it when started fresh)."""
        self.loader.next_epoch = self.epoch
        for i, (tokens, label, video, bounds) in enumerate(self.loader):
            if i < self.step:
                continue  # resume: already consumed
            self.step = i + 1
            # ffcv hands out views of a ring of buffers it refills batches_ahead batches later: copy
            # everything a caller may keep (evaluation holds every batch's labels until the end)
            label = torch.as_tensor(label).clone()
            if label.ndim == 2 and label.shape[1] == 1:
                label = label[:, 0]
            tokens = torch.as_tensor(tokens).view(torch.float16).float()  # int16 bits -> float16 -> float32 (a copy)
            video = torch.as_tensor(video).reshape(-1)
            bounds = torch.as_tensor(bounds).clone()
            if self.segments:  # (B*T, P, D) segments, T per video in order -> (B, T*P, D) examples
                T = self.segments
                tokens = tokens.reshape(-1, T * tokens.shape[1], tokens.shape[2])  # (B, T*P, D)
                label, video = label[::T], video[::T]
                bounds = torch.stack([bounds[::T, 0], bounds[T - 1::T, 1]], 1)  # (B, 2) first start, last end
            batch = {"tokens": tokens, "label": label, "video_id": [self.video_ids[int(v)] for v in video],
                     "bounds": bounds}
            if self.captions is not None:  # captioning: each clip's video's captions (`;`-separated)
                texts = [self.captions[v] for v in batch["video_id"]]
                if not self.finite:  # training: one description per clip, drawn as the video path draws it
                    texts = [_pick(t, sample_rng(self.seed, self.epoch, f"{v}@{float(b[0]):.3f}"))
                             for t, v, b in zip(texts, batch["video_id"], bounds)]
                batch["caption"] = texts
            yield batch
        if not self.finite:
            self.epoch, self.step = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "rank": self.rank, "world": self.world,
                "batch_size": self.batch_size, "backend": "features",
                "elastic": {e: o.tolist() for e, o in self.order.overrides.items() if e >= self.epoch}}

    def load_elastic_state(self, states: list[dict]) -> None:
        """Resume from the states of *every* rank of a run with another world size: the records of the
        interrupted epoch that no old rank had consumed are dealt round-robin to this run's ranks in
        equal shares of whole batches (the few left over are dropped, as ``drop_last`` drops an
        epoch's tail on every rank); later epochs follow this run's world size. A cache of single
        segments is dealt the same way by video (an example = one video's drawn segments; the draws
        depend on (seed, epoch, video) only, so a resumed video gets the segments it would have).
        Raises ValueError for another backend or a missing rank's state."""
        if any(s.get("backend") != "features" for s in states):
            raise ValueError("data loader state was saved by another decode backend; resume with the same data.backend")
        old_world, epoch = states[0]["world"], states[0]["epoch"]
        if sorted(s["rank"] for s in states) != list(range(old_world)):
            raise ValueError(f"elastic resume needs the loader state of each of the {old_world} ranks that saved it")
        indices = np.arange(self.num_samples)
        consumed, shares = set(), set()
        for s in states:
            elastic = {int(e): o for e, o in s.get("elastic", {}).items()}
            order = elastic.get(epoch)
            if order is None:
                order = epoch_order(indices, self.seed, epoch, self.shuffle)[s["rank"]::old_world]
            else:  # that run was itself resumed elastically in this epoch: only its shares were still to read
                shares.update(int(i) for i in order)
            consumed.update(int(i) for i in order[:s["step"] * s.get("batch_size", self.batch_size)])
        left = [int(i) for i in epoch_order(indices, self.seed, epoch, self.shuffle)
                if int(i) not in consumed and (not shares or int(i) in shares)]
        share = len(left) // self.world // self.batch_size * self.batch_size
        self.order.overrides[epoch] = np.asarray(left[self.rank::self.world][:share], dtype=np.int64)
        self.epoch, self.step = epoch, 0

    def load_state_dict(self, state: dict) -> None:
        if state.get("backend") != "features":
            raise ValueError("data loader state was saved by another decode backend; resume with the same data.backend")
        if state["world"] != self.world:
            raise ValueError(f"data loader state was saved with {state['world']} data-parallel ranks, this run has "
                             f"{self.world}: resuming would replay or skip samples; refusing")
        self.epoch, self.step = state["epoch"], state["step"]
        self.order.overrides.update({int(e): np.asarray(o, dtype=np.int64) for e, o in state.get("elastic", {}).items()})

    def close(self) -> None:
        """Nothing to stop: ffcv reads with threads of this process."""
