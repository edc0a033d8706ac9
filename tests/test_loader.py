"""Streaming loader (CPU backend): resumable mid-epoch, equal batch counts on every rank without
hangs, bad samples skipped, LSMCL long/short clips from one decode, evaluation windows."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from s5video.data.clips import ClipSpec, plan_clips, spatial_transform
from s5video.data.loader import VideoLoader, _stream_states
from tests.helpers import repack

REPO = Path(__file__).resolve().parents[1]


def regroup(src: Path, split: str, sizes: list[int], out: Path, corrupt: set[int] = frozenset()) -> Path:
    """Only ``split``, re-packed into shards of the given sizes (tests.helpers.repack)."""
    return repack(src, out, {split: sizes}, corrupt, only=True)


def _loader(shards, **kw) -> VideoLoader:
    args = dict(spec=ClipSpec(mode="train", frames=4, seconds=2.0), batch_size=4, image_size=64, num_workers=2, seed=3)
    args.update(kw)
    return VideoLoader(str(shards), "train", **args)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a: dict, b: dict) -> bool:
    return a["video_id"] == b["video_id"] and torch.equal(a["video"], b["video"]) and torch.equal(a["label"], b["label"])


def test_resume_mid_epoch_gives_identical_next_batches(demo_shards, tmp_path):
    shards = regroup(demo_shards, "train", [20, 20, 23], tmp_path / "s")
    ref = _loader(shards)
    n = ref.steps_per_epoch  # 63 // 4 = 15
    ref_batches = list(ref) + _take(iter(ref), 5)  # one epoch and 5 batches into the next
    a = _loader(shards)
    it = iter(a)
    first = _take(it, 7)
    state = a.state_dict()
    del it, a
    b = _loader(shards)
    b.load_state_dict(state)
    rest = list(b) + _take(iter(b), 5)
    got = first + rest
    assert len(got) == n + 5
    assert all(_same(x, y) for x, y in zip(got, ref_batches))
    assert sum(len(x["video_id"]) for x in got[:n]) == 4 * n


def _endless(loader: VideoLoader):
    while True:  # virtual epoch after virtual epoch
        yield from loader


def _in_queue(loader: VideoLoader) -> list[bool]:
    """Per reader of ``loader``: is it still reading its elastic queue (as of the last batch yielded)?"""
    return [bool(st.get("queue")) for st in _stream_states(loader.dl.state_dict())]


def _read(loaders: list[VideoLoader], batches: int | None = None) -> list[tuple[str, int]]:
    """(key, pass) of the samples ``loaders`` yield, one batch of each in turn: ``batches`` rounds, or
    (None) until every reader has left its elastic queue."""
    its, got = [_endless(x) for x in loaders], []
    for n in range(200):
        if batches is not None and n == batches or \
                batches is None and n >= 4 and not any(q for x in loaders for q in _in_queue(x)):
            break
        for it in its:
            b = next(it)
            got += list(zip(b["video_id"], b["pass"].tolist()))
    return got


@pytest.mark.parametrize("old,new", [((2, 1), (1, 2)), ((1, 2), (2, 0)), ((2, 2), (3, 1))],
                         ids=["2x1-1x2-2x1", "1x2-2x0-1x2", "2x2-3x1-2x2"])
def test_elastic_resume_reads_each_sample_of_the_pass_once(demo_shards, tmp_path, old, new):
    """(ranks x workers) stopped mid-pass, resumed on other (ranks x workers), stopped again before its
    elastic queues are read, resumed on the first layout: the samples of the first pass read by all
    three are the split's 63 keys, each exactly once; every reader then goes on with later passes."""
    shards = regroup(demo_shards, "train", [16, 16, 16, 15], tmp_path / "s")
    spec = dict(spec=ClipSpec(mode="train", frames=2, seconds=1.0), image_size=32, batch_size=1)
    every = [k for b in _loader(shards, world=1, num_workers=0, finite=True, **spec) for k in b["video_id"]]
    assert len(every) == 63 == len(set(every))

    def start(layout, states=None):
        world, workers = layout
        loaders = [_loader(shards, rank=r, world=world, num_workers=workers, **spec) for r in range(world)]
        for x in loaders:
            if states is not None:
                x.load_elastic_state(states)
        return loaders

    def stop(loaders):
        states = [x.state_dict() for x in loaders]
        for x in loaders:
            x.close()
        return states

    first = start(old)
    got = _read(first, batches=9)  # mid-pass for every reader
    second = start(new, stop(first))
    got += _read(second, batches=2)
    assert any(q for x in second for q in _in_queue(x))  # stopped again while the queues are being read
    third = start(old, stop(second))
    got += _read(third)
    stop(third)
    assert sorted(k for k, p in got if p == 0) == sorted(every)
    assert {p for _, p in got} == {0, 1}


RANK_SCRIPT = """
import sys
from s5video.data.loader import VideoLoader, _stream_states
from s5video.data.clips import ClipSpec
rank, shards = int(sys.argv[1]), sys.argv[2]
L = VideoLoader(shards, "train", ClipSpec(mode="train", frames=2, seconds=1.0), batch_size=4, image_size=32,
                rank=rank, world=2, num_workers=2, seed=0)
n = sum(1 for _ in L) + sum(1 for _ in L)
print(n, L.steps_per_epoch)
"""


@pytest.mark.parametrize("sizes", [[63], [40, 20, 3]], ids=["one_shard", "three_uneven_shards"])
def test_two_ranks_yield_equal_batches_without_hang(demo_shards, tmp_path, sizes):
    shards = regroup(demo_shards, "train", sizes, tmp_path / "s")
    procs = [subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(r), str(shards)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("a rank hung")
        assert p.returncode == 0, err[-2000:]
        outs.append(out.split())
    steps = 63 // (4 * 2)
    assert outs[0] == outs[1] == [str(2 * steps), str(steps)]


def test_bad_samples_are_skipped_and_batches_stay_full(demo_shards, tmp_path, caplog):
    shards = regroup(demo_shards, "train", [30, 33], tmp_path / "s", corrupt={1, 5, 40})
    L = _loader(shards, num_workers=0)
    batches = list(L)
    assert len(batches) == 15 and all(len(b["video_id"]) == 4 for b in batches)
    assert L.bad_samples() == 3
    assert "skipping bad sample" in caplog.text


def test_pretrain_long_and_short_from_one_decode(demo_shards):
    spec = ClipSpec(mode="pretrain", long_frames=8, long_seconds=6.0, short_frames=4, short_seconds=2.0)
    L = VideoLoader(str(demo_shards), "pretrain", spec, batch_size=3, image_size=64, num_workers=0, seed=0)
    b = next(iter(L))
    assert b["long"].shape == (3, 8, 3, 64, 64) and b["short"].shape == (3, 4, 3, 64, 64)
    lb, sb = b["long_bounds"], b["short_bounds"]
    assert torch.all(sb[:, 0] >= lb[:, 0]) and torch.all(sb[:, 1] <= lb[:, 1] + 1e-6)
    assert torch.all(b["label"] == -1)  # unlabelled split
    # one decode: a short frame and a long frame that index the same decoded frame are identical
    rng = np.random.default_rng(0)
    plan = plan_clips(spec, num_frames=64, fps=8.0, rng=rng)[0]
    (_, lbnd), (si, _) = plan["long"], plan["short"]
    assert set(si) <= set(range(int(lbnd[0] * 8), int(lbnd[1] * 8) + 1))


def test_eval_windows_cover_the_video():
    spec = ClipSpec(mode="windows", frames=4, seconds=60.0, stride=1.0)
    plans = plan_clips(spec, num_frames=100 * 2, fps=2.0, rng=np.random.default_rng(0))  # a 100-s video
    assert len(plans) == 41  # starts 0..40 s
    starts = [p["video"][1][0] for p in plans]
    assert starts == [float(s) for s in range(41)] and plans[-1]["video"][1] == (40.0, 100.0)
    short = plan_clips(spec, num_frames=20, fps=2.0, rng=np.random.default_rng(0))  # 10-s video: one window
    assert len(short) == 1 and short[0]["video"][0].max() <= 19


def test_brace_pattern_and_pipe_sources(demo_shards, tmp_path):
    shards = regroup(demo_shards, "train", [30, 33], tmp_path / "s")
    spec = ClipSpec(mode="val", frames=2, seconds=1.0)
    ref = VideoLoader(str(shards), "train", spec, 3, 32, num_workers=0)
    pattern = str(shards / "train-{000000..000001}.tar")
    by_pattern = VideoLoader(pattern, "train", spec, 3, 32, num_workers=0, num_samples=63)
    piped = VideoLoader(f"pipe:cat {shards}/train-000000.tar::pipe:cat {shards}/train-000001.tar", "train", spec, 3, 32,
                        num_workers=0, num_samples=63)
    a, b, c = list(ref), list(by_pattern), list(piped)
    assert len(a) == len(b) == len(c) == 21
    assert all(_same(x, y) and _same(x, z) for x, y, z in zip(a, b, c))
    with pytest.raises(ValueError, match="number of samples"):
        VideoLoader(pattern, "train", spec, 3, 32, num_workers=0)


@pytest.mark.parametrize("shape", [(4, 144, 256), (2, 90, 60)])  # downscale; upscale (short side 60 < 112)
def test_uint8_resize_within_one_grey_level_of_float(shape):
    """spatial_transform resizes the uint8 frames; the float32 antialiased resize of the same
    frames (the independent reference) differs by rounding only."""
    import torch.nn.functional as F

    T, H, W = shape
    frames = torch.randint(0, 256, (T, H, W, 3), dtype=torch.uint8)
    out = spatial_transform(frames, 112, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), False, np.random.default_rng(0))
    scale = 112 / min(H, W)
    nh, nw = max(112, round(H * scale)), max(112, round(W * scale))
    ref = F.interpolate(frames.permute(0, 3, 1, 2).float() / 255, size=(nh, nw), mode="bilinear", antialias=True,
                        align_corners=False)
    top, left = int((nh - 112) / 2 + 0.5), int((nw - 112) / 2 + 0.5)
    ref = (ref[..., top:top + 112, left:left + 112] - 0.5) / 0.5
    assert out.shape == ref.shape == (T, 3, 112, 112)
    assert (out - ref).abs().max().item() * 0.5 * 255 <= 1.0 + 1e-3


def test_random_resized_crop_boxes_follow_their_ranges_and_the_clip_shares_one_draw():
    """random_resized_box: every box lies in the frame with its area fraction in crop_scale and its
    aspect ratio in crop_ratio (or is the documented fallback); spatial_transform crops all frames of
    a clip with one box, resized like torch's own antialiased resize of that box, and hflip mirrors."""
    import math

    import torch.nn.functional as F

    from s5video.data.clips import random_resized_box

    rng = np.random.default_rng(0)
    H, W = 144, 256
    for _ in range(200):
        top, left, h, w = random_resized_box(H, W, (0.2, 0.9), (0.75, 4 / 3), rng)
        assert 0 <= top and top + h <= H and 0 <= left and left + w <= W
        assert 0.2 - 0.02 <= h * w / (H * W) <= 0.9 + 0.02
        assert math.log(0.75) - 0.05 <= math.log(w / h) <= math.log(4 / 3) + 0.05
    # ratios the frame cannot hold: the centred box of the nearest ratio
    assert random_resized_box(100, 100, (0.9, 1.0), (3.0, 4.0), rng) == (33, 0, 33, 100)
    # one box for the whole clip: frame t carries the value t, so each output frame is constant t
    T = 3
    ramp = torch.arange(W, dtype=torch.float32).expand(H, W) * 255 / (W - 1)
    frames = torch.stack([ramp.round().to(torch.uint8)] * T)[..., None].expand(T, H, W, 3).contiguous()
    a = spatial_transform(frames, 64, (0.0,) * 3, (1.0,) * 3, True, np.random.default_rng(5), (0.3, 0.6))
    box = random_resized_box(H, W, (0.3, 0.6), (0.75, 4 / 3), np.random.default_rng(5))
    top, left, h, w = box
    ref = F.interpolate(frames.permute(0, 3, 1, 2)[..., top:top + h, left:left + w].float(), size=(64, 64),
                        mode="bilinear", antialias=True, align_corners=False) / 255
    assert (a - ref).abs().max().item() * 255 <= 1.0 + 1e-3
    assert torch.equal(a[0], a[1]) and torch.equal(a[1], a[2])
    # hflip=1 mirrors the same crop; the horizontal ramp then runs the other way
    b = spatial_transform(frames, 64, (0.0,) * 3, (1.0,) * 3, True, np.random.default_rng(5), (0.3, 0.6), hflip=1.0)
    assert torch.equal(b, a.flip(-1)) and b[0, 0, 0, 0] > b[0, 0, 0, -1]
    # the flip probability: 0.3 of 2,000 clips within 4 standard deviations
    rng = np.random.default_rng(1)
    small = frames[:1, :8, :8]
    flips = sum(bool(spatial_transform(small, 8, (0.0,) * 3, (1.0,) * 3, True, rng, hflip=0.3)[0, 0, 0, 0] >
                     spatial_transform(small, 8, (0.0,) * 3, (1.0,) * 3, True, np.random.default_rng(9))[0, 0, 0, 0])
                for _ in range(2000))
    assert abs(flips - 600) <= 4 * math.sqrt(2000 * 0.3 * 0.7)
    # evaluation ignores the augmentation: the centre crop as before
    c = spatial_transform(frames, 64, (0.0,) * 3, (1.0,) * 3, False, np.random.default_rng(5), (0.3, 0.6), hflip=1.0)
    assert torch.equal(c, spatial_transform(frames, 64, (0.0,) * 3, (1.0,) * 3, False, np.random.default_rng(5)))
