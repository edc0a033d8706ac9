"""Frozen-feature cache with FFCV: run the frozen encoder once, train the decoder for hundreds of
epochs on the cached tokens (ViS4mer-style finetuning) instead of decoding and encoding every epoch.

Writer (:func:`write_feature_cache`, used by ``tools/extract_features.py``): one record per clip
or window with fields ``tokens`` (T*P, D) float16 (stored as its int16 bits), ``label`` (int64 class id, float target, or
multi-hot float32 (C,)), ``video`` (int index into the sidecar ``<file>.videos.json``) and
``bounds`` (2,) float32 seconds. Reader (:class:`FeatureLoader`): ffcv's ``Loader`` yielding the
trainer's batch dicts with ``tokens`` (B, T*P, D) float32 instead of ``video``.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Iterable, Iterator

import numpy as np
import torch


def write_feature_cache(records: Iterable[dict], path: str, num_tokens: int, dim: int, label_shape: tuple = (),
                        label_dtype=np.int64, num_workers: int = 1) -> int:
    """Write records ``{"tokens": (num_tokens, dim), "label", "video_id": str, "bounds": (2,)}`` to the
    FFCV file ``path`` (+ ``path.videos.json``). Tokens are staged in a float16 memmap first, so
    memory stays bounded. Returns the number of records."""
    from ffcv.fields import FloatField, IntField, NDArrayField
    from ffcv.writer import DatasetWriter

    tmpdir = tempfile.mkdtemp(prefix=".features-", dir=os.path.dirname(os.path.abspath(path)) or ".")
    cap, n = 1024, 0
    mm = np.lib.format.open_memmap(os.path.join(tmpdir, "tok.npy"), "w+", np.float16, (cap, num_tokens, dim))
    labels, vids, bounds, video_ids = [], [], [], {}
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
    for p in os.listdir(tmpdir):
        os.unlink(os.path.join(tmpdir, p))
    os.rmdir(tmpdir)
    return n


class FeatureLoader:
    """Batches of cached tokens through ffcv's ``Loader``: ``tokens`` (B, T*P, D) float32,
    ``label``, ``video_id`` (list of B), ``bounds`` (B, 2) seconds.

    order: ``"random"`` (reshuffled each epoch, seeded) or ``"sequential"``. With ``distributed``
    ffcv splits the records over the torch.distributed ranks. Tokens are stored as the int16 bit
    patterns of float16 values (ffcv's numba pipeline has no float16).
    """

    def __init__(self, path: str, batch_size: int, order: str = "random", seed: int = 0, num_workers: int = 1,
                 drop_last: bool = True, distributed: bool = False):
        from ffcv.fields.decoders import FloatDecoder, IntDecoder, NDArrayDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.transforms import ToTensor

        if not os.path.exists(path):
            raise FileNotFoundError(f"data.features: {path} does not exist (write it with tools/extract_features.py)")
        self.video_ids = json.load(open(path + ".videos.json"))
        orders = {"random": OrderOption.RANDOM, "sequential": OrderOption.SEQUENTIAL}
        if order not in orders:
            raise ValueError(f"order: {order!r} not allowed; allowed values: 'random', 'sequential'")
        label_dec = IntDecoder()
        from ffcv.reader import Reader
        ftype = type(Reader(path).handlers["label"]).__name__
        if ftype == "FloatField":
            label_dec = FloatDecoder()
        elif ftype == "NDArrayField":
            label_dec = NDArrayDecoder()
        self.loader = Loader(path, batch_size=batch_size, num_workers=num_workers, order=orders[order], seed=seed,
                             drop_last=drop_last, distributed=distributed,
                             pipelines={"tokens": [NDArrayDecoder(), ToTensor()], "label": [label_dec, ToTensor()],
                                        "video": [IntDecoder(), ToTensor()], "bounds": [NDArrayDecoder(), ToTensor()]})

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict]:
        for tokens, label, video, bounds in self.loader:
            label = label.reshape(label.shape[0], *label.shape[1:]) if label.ndim > 1 else label
            if label.ndim == 2 and label.shape[1] == 1:
                label = label[:, 0]
            tokens = torch.as_tensor(tokens).view(torch.float16).float()  # int16 bits -> float16 -> float32
            yield {"tokens": tokens, "label": torch.as_tensor(label),
                   "video_id": [self.video_ids[int(v)] for v in torch.as_tensor(video).reshape(-1)],
                   "bounds": torch.as_tensor(bounds)}
