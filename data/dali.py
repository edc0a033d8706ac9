"""DALI decode backend: ``fn.readers.webdataset`` -> ``fn.decoders.video`` -> resize / crop /
normalise inside the DALI pipeline, on the GPU (``device="mixed"``: NVDEC) or on the CPU
(``device="cpu"``: DALI's FFmpeg-based decoder, VP9 shards; it cannot decode H.264).

Each sample is decoded once into all its frames (shards are stored at a low frame rate), then the
shared clip planner (:mod:`data.clips`) indexes that one decoded sequence: LSMCL's long and short
clips, a training clip or the evaluation windows. The output contract is the CPU backend's
(:mod:`data.loader`).

Sharding: the reader's ``shard_id`` / ``num_shards`` = data-parallel rank / world, rotated by one
each virtual epoch so every rank sees every sample over ``world`` epochs. Epochs are virtual
(``num_samples // (batch * world)`` batches per rank, never more than a rank's DALI shard holds),
so every rank yields the same number of batches and no reader runs dry mid-epoch.

Resume: DALI's pipeline checkpointing (``enable_checkpointing``) is not implemented for
``fn.decoders.video`` (DALI 2.4 refuses to build such a pipeline), so the loader is deterministic
instead: one pipeline per virtual epoch, seeded with ``seed + epoch``; its state is (epoch, step,
pipeline runs, outputs consumed), and :meth:`DaliVideoLoader.load_state_dict` rebuilds that epoch's
pipeline and replays the runs already consumed. The next batches are exactly those of an
uninterrupted run; the cost is re-decoding the part of the current epoch already trained on.
DALI cannot swap a bad sample inside a batch: undecodable samples must be caught when sharding
(``tools/make_shards.py`` validates every sample by decoding it).
"""
from __future__ import annotations

import json

import numpy as np
import torch

from s5video.data.base import ClipLoader
from s5video.data.clips import ClipSpec, plan_clips, sample_rng
from s5video.data.loader import SampleMaker
from s5video.data.sources import resolve_shards


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401  (availability check)
        return True
    except ImportError:
        return False


def build_video_pipeline(urls: list[str], batch_size: int, image_size: int, mean, std, shard_id: int,
                         num_shards: int, seed: int, device: str, train: bool, shuffle: bool,
                         num_threads: int = 2, crop_scale: tuple | None = None, crop_ratio: tuple = (0.75, 4 / 3),
                         hflip: float = 0.0):
    """The DALI pipeline: outputs (frames (F, 3, S, S) float normalised, json bytes) per sample.

    device: ``"cpu"`` (device_id None) or ``"mixed"`` (GPU decode, device_id = current CUDA device).
    Training augmentation as :func:`data.clips.spatial_transform` (one draw per decoded video, so
    the clips cut from it share it): ``crop_scale`` -> ``fn.random_resized_crop`` (area fraction,
    aspect ratio ``crop_ratio``), ``hflip`` -> ``crop_mirror_normalize``'s ``mirror`` coin flip.
    """
    from nvidia.dali import fn, pipeline_def, types  # noqa: PLC0415

    device_id = None if device == "cpu" else torch.cuda.current_device()

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
                  prefetch_queue_depth=2)
    def pipe():
        video, meta = fn.readers.webdataset(
            paths=urls, ext=["mp4", "json"], missing_component_behavior="error", shard_id=shard_id,
            num_shards=num_shards, random_shuffle=shuffle, initial_fill=256, seed=seed, name="reader")
        frames = fn.decoders.video(video, device=device)  # (F, H, W, 3) uint8
        if train and crop_scale is not None:
            frames = fn.random_resized_crop(frames, size=[image_size, image_size], random_area=list(crop_scale),
                                            random_aspect_ratio=list(crop_ratio), antialias=True)  # (F, S, S, 3)
            pos = {}
        else:
            frames = fn.resize(frames, resize_shorter=image_size, antialias=True)  # (F, h, w, 3)
            pos = dict(crop_pos_x=fn.random.uniform(range=(0.0, 1.0)),
                       crop_pos_y=fn.random.uniform(range=(0.0, 1.0))) if train else {}
        if train and hflip > 0:
            pos["mirror"] = fn.random.coin_flip(probability=hflip)
        frames = fn.crop_mirror_normalize(
            frames, crop=(image_size, image_size), mean=[255.0 * m for m in mean], std=[255.0 * s for s in std],
            dtype=types.FLOAT, output_layout="FCHW", **pos)  # (F, 3, S, S)
        return frames, meta

    p = pipe()
    p.build()
    return p


class DaliVideoLoader(ClipLoader):
    """Same arguments and batches as :class:`data.loader.VideoLoader`, decoded by DALI.

    device: ``"cpu"`` or ``"mixed"``. Local shard files only (DALI's reader opens paths).
    """

    def __init__(self, source: str, split: str, spec: ClipSpec, batch_size: int, image_size: int,
                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), rank: int = 0, world: int = 1, seed: int = 0,
                 device: str = "cpu", task: str = "classification", num_classes: int = 0, shuffle: bool = True,
                 num_threads: int = 2):
        self.shards = resolve_shards(source, split)
        self.rank, self.world, self.batch_size, self.seed = rank, world, batch_size, seed
        self.steps_per_epoch = max(1, self.shards.num_samples // (batch_size * world))
        self.train = spec.mode in ("train", "pretrain")
        self.maker = SampleMaker(spec, image_size, mean, std, seed, task, num_classes or len(self.shards.classes))
        self._args = dict(urls=self.shards.urls, batch_size=batch_size, image_size=image_size, mean=mean, std=std,
                          num_shards=world, device=device, train=self.train, shuffle=shuffle, num_threads=num_threads,
                          crop_scale=spec.crop_scale, crop_ratio=spec.crop_ratio, hflip=spec.hflip)
        self.epoch, self.step = 0, 0
        self._start_epoch()

    def _start_epoch(self, replay_runs: int = 0, consumed: int = 0) -> None:
        """Build this epoch's pipeline; replay ``replay_runs`` runs and drop ``consumed`` outputs."""
        self.pipe = build_video_pipeline(**self._args, seed=self.seed + self.epoch,
                                         shard_id=(self.rank + self.epoch) % self.world)
        self.runs, self.consumed, self._pending = 0, 0, []
        for _ in range(replay_runs):
            self._pending += self._samples(*self._run())
        self._pending = self._pending[consumed:]
        self.consumed = consumed

    @property
    def num_samples(self) -> int:
        """Videos in the split (all ranks together)."""
        return self.shards.num_samples

    def _run(self):
        self.runs += 1
        try:
            return self.pipe.run()
        except RuntimeError as e:  # DALI fails the whole batch; it cannot skip one sample inside it
            raise RuntimeError(
                f"DALI could not read/decode a batch of split shards {self.shards.urls[:3]}"
                f"{' ...' if len(self.shards.urls) > 3 else ''} (rank {self.rank}, epoch {self.epoch}): "
                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}. A corrupt sample stops a DALI "
                "pipeline; data.backend=cpu skips and reports such samples, and re-running "
                "tools/make_shards.py on the sources validates every sample.") from e

    def _samples(self, frames_tl, meta_tl) -> list[dict]:
        from nvidia.dali.backend import TensorListGPU  # noqa: PLC0415

        on_gpu = isinstance(frames_tl, TensorListGPU)
        outs = []
        for i in range(len(meta_tl)):
            meta = json.loads(bytes(np.array(meta_tl[i])))
            key = meta.get("key", "")
            if on_gpu:
                from nvidia.dali.plugin.pytorch import feed_ndarray  # noqa: PLC0415
                t = frames_tl[i]
                frames = torch.empty(t.shape(), dtype=torch.float32, device="cuda")
                feed_ndarray(t, frames, cuda_stream=torch.cuda.current_stream())
            else:
                frames = torch.from_numpy(np.array(frames_tl[i]))  # (F, 3, S, S)
            rng = sample_rng(self.seed, self.epoch, key)
            plans = plan_clips(self.maker.spec, frames.shape[0], float(meta.get("fps") or 0) or 1.0, rng)
            outs += self.maker.assemble(key, meta, plans,
                                        lambda idx, f=frames: f[torch.as_tensor(idx, device=f.device)],  # (T, 3, S, S)
                                        rng)
        return outs

    def __iter__(self):
        """The rest of the current virtual epoch."""
        from torch.utils.data import default_collate  # noqa: PLC0415

        while self.step < self.steps_per_epoch:
            while len(self._pending) < self.batch_size:
                self._pending += self._samples(*self._run())
            batch, self._pending = self._pending[:self.batch_size], self._pending[self.batch_size:]
            self.step += 1
            self.consumed += len(batch)
            yield default_collate(batch)
        self.epoch, self.step = self.epoch + 1, 0
        self._start_epoch()

    def close(self) -> None:
        """Release the pipeline (its decode threads and buffers); the next epoch would build a new one."""
        self.pipe = None

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "rank": self.rank, "world": self.world,
                "runs": self.runs, "consumed": self.consumed, "backend": "dali"}

    def load_elastic_state(self, states: list[dict]) -> None:
        """Refused: DALI's readers keep their position per ``shard_id`` of a fixed ``num_shards``.
        Raises ValueError naming the ways out."""
        raise ValueError(f"data.backend=dali cannot resume a checkpoint of {states[0]['world']} ranks on {self.world}: "
                         f"DALI's readers keep their position per rank. Resume on {states[0]['world']} ranks, or with "
                         "data.backend=cpu from a run trained with it, or start a new run with run.init_from")

    def load_state_dict(self, state: dict) -> None:
        if state["world"] != self.world:
            raise ValueError(f"data loader state was saved with {state['world']} data-parallel ranks, this run has "
                             f"{self.world}: resuming would replay or skip samples; refusing")
        if state.get("backend") != "dali":
            raise ValueError("data loader state was saved by another decode backend; resume with the same data.backend")
        self.epoch, self.step = state["epoch"], state["step"]
        self._start_epoch(replay_runs=state["runs"], consumed=state["consumed"])
