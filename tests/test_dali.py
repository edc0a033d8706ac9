"""DALI backend: same frames and labels as the CPU backend on the same shards, exact resume by
replay, equal batch counts per rank, and (GPU only) the mixed NVDEC pipeline."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from s5video.data import build_loader, choose_backend
from s5video.data.clips import ClipSpec
from s5video.data.dali import DaliVideoLoader
from s5video.data.loader import VideoLoader
from tests.test_loader import _same, _take, regroup


def _by_id(batches):
    return {k: (v, l) for b in batches for k, v, l in zip(b["video_id"], b["video"], b["label"])}


def _psnr_normalised(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a - b) * 127.5).square().mean().item()  # mean = std = 0.5: [-1, 1] -> [0, 255]
    return 10 * np.log10(255.0 ** 2 / mse)


def test_dali_cpu_and_cpu_backend_agree(demo_shards):
    spec = ClipSpec(mode="val", frames=8, seconds=2.0)
    dali = _by_id(DaliVideoLoader(str(demo_shards), "val", spec, batch_size=3, image_size=112, shuffle=False))
    cpu = _by_id(VideoLoader(str(demo_shards), "val", spec, batch_size=3, image_size=112, num_workers=0))
    assert set(dali) == set(cpu) and len(dali) == 21
    for key in dali:
        (a, la), (b, lb) = dali[key], cpu[key]
        assert a.shape == b.shape == (8, 3, 112, 112)
        assert la.item() == lb.item()
        assert _psnr_normalised(a, b) >= 35.0, key  # resize/chroma rounding differences only
    # a wrong frame choice would not pass: shifting one clip by a frame drops the agreement
    key = next(k for k in dali if k.startswith("street"))
    a, b = dali[key][0], cpu[key][0]
    assert _psnr_normalised(a[1:], b[:-1]) < _psnr_normalised(a, b)


def test_dali_augmentation_matches_the_cpu_backend(demo_shards):
    """Training augmentation on both backends: a random resized crop whose only possible box is the
    whole 16:9 frame (area 1, ratio 16:9: the film's classes) and a certain flip give the same clips
    from DALI (fn.random_resized_crop, mirror) as from the CPU path (the clip positions come from the
    same per-video seeds), and the CPU clips are the mirror images of the unflipped ones."""
    spec = ClipSpec(mode="train", frames=4, seconds=2.0, crop_scale=(1.0, 1.0), crop_ratio=(16 / 9, 16 / 9), hflip=1.0)
    plain = ClipSpec(mode="train", frames=4, seconds=2.0, crop_scale=(1.0, 1.0), crop_ratio=(16 / 9, 16 / 9))
    dali = _by_id(_take(iter(DaliVideoLoader(str(demo_shards), "val", spec, batch_size=3, image_size=64,
                                             shuffle=False)), 7))
    cpu = _by_id(_take(iter(VideoLoader(str(demo_shards), "val", spec, batch_size=3, image_size=64, num_workers=0)), 7))
    unflipped = _by_id(_take(iter(VideoLoader(str(demo_shards), "val", plain, batch_size=3, image_size=64,
                                              num_workers=0)), 7))
    film = [k for k in dali if k.split("_")[0] in ("meadow", "burrow", "rodents", "credits")]  # 1280x720 source
    assert len(dali) == len(cpu) == 21 and len(film) >= 10
    for key in film:
        assert dali[key][0].shape == (4, 3, 64, 64)
        assert _psnr_normalised(dali[key][0], cpu[key][0]) >= 35.0, key
        assert torch.equal(cpu[key][0], unflipped[key][0].flip(-1)), key
        assert _psnr_normalised(dali[key][0], unflipped[key][0]) < 30.0, key


def test_dali_resume_replays_to_identical_batches(demo_shards, tmp_path):
    spec = ClipSpec(mode="train", frames=4, seconds=2.0)
    kw = dict(spec=spec, batch_size=4, image_size=64, seed=5)
    ref = DaliVideoLoader(str(demo_shards), "train", **kw)
    n = ref.steps_per_epoch
    expected = list(ref) + _take(iter(ref), 3)
    a = DaliVideoLoader(str(demo_shards), "train", **kw)
    it = iter(a)
    got = _take(it, 6)
    state = a.state_dict()
    b = DaliVideoLoader(str(demo_shards), "train", **kw)
    b.load_state_dict(state)
    got += list(b) + _take(iter(b), 3)
    assert len(got) == len(expected) == n + 3
    assert all(_same(x, y) for x, y in zip(got, expected))
    assert not all(_same(x, y) for x, y in zip(expected[:3], expected[n:n + 3]))  # epochs differ
    with pytest.raises(ValueError, match="data-parallel ranks"):
        DaliVideoLoader(str(demo_shards), "train", world=2, **kw).load_state_dict(state)


def test_dali_ranks_yield_equal_batches_over_uneven_shards(demo_shards, tmp_path):
    shards = regroup(demo_shards, "train", [40, 20, 3], tmp_path / "s")
    counts = []
    for rank in range(2):
        L = DaliVideoLoader(str(shards), "train", ClipSpec(mode="train", frames=2, seconds=1.0), batch_size=4,
                            image_size=32, rank=rank, world=2)
        counts.append(sum(1 for _ in L) + sum(1 for _ in L))
    assert counts == [2 * (63 // 8)] * 2


def test_auto_backend_choice(demo_shards):
    assert choose_backend("auto", str(demo_shards)) == ("dali-mixed" if torch.cuda.is_available() else "cpu")
    assert choose_backend("dali", str(demo_shards)) == ("dali-mixed" if torch.cuda.is_available() else "dali-cpu")
    assert choose_backend("cpu", str(demo_shards)) == "cpu"
    with pytest.raises(ValueError, match="allowed values"):
        choose_backend("gpu", str(demo_shards))
    spec = ClipSpec(mode="val", frames=2, seconds=1.0)
    L = build_loader("dali", str(demo_shards), "val", spec, batch_size=2, image_size=32, num_workers=0)
    assert isinstance(L, DaliVideoLoader)
    L = build_loader("auto", str(demo_shards), "val", spec, batch_size=2, image_size=32, num_workers=0)
    assert isinstance(L, DaliVideoLoader if torch.cuda.is_available() else VideoLoader)


@pytest.mark.gpu
def test_dali_mixed_gpu_pipeline_matches_cpu(demo_shards):
    spec = ClipSpec(mode="val", frames=8, seconds=2.0)
    gpu = _by_id(DaliVideoLoader(str(demo_shards), "val", spec, batch_size=3, image_size=112, shuffle=False,
                                 device="mixed"))
    cpu = _by_id(DaliVideoLoader(str(demo_shards), "val", spec, batch_size=3, image_size=112, shuffle=False))
    assert set(gpu) == set(cpu)
    for key in gpu:
        assert gpu[key][0].is_cuda
        assert _psnr_normalised(gpu[key][0].cpu(), cpu[key][0]) >= 30.0, key
