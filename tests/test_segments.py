"""The ViS4mer authors' Breakfast / COIN clip protocol (``data.sampling: segments``): T segments
over the whole video - training a random sorted sample, evaluation uniformly spaced, short videos
stretched - checked against the arithmetic of their ``datasets/breakfast_dataset.py`` (written out
below, not imported), on the video path and on the feature cache."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from s5video.data.clips import ClipSpec, num_segments, plan_clips, sample_rng, segment_indices
from tests.helpers import REPO, TINY

SEG = 0.5  # seconds: the demo's videos are a few seconds long, so that some have more segments than T
DATA = ["data.image_size=64", "data.frames=4", "data.sampling=segments", f"data.segment_seconds={SEG}"]


def authors_indices(n: int, l_secs: int, split: str, rnd: random.Random) -> np.ndarray:
    """md-mohaiminul/ViS4mer, datasets/breakfast_dataset.py, CustomDataset.__getitem__ (also
    coin_dataset.py), on a feature array of n rows (one per second): the rows it keeps."""
    rows = np.arange(n)
    if n < l_secs:
        step = n / float(l_secs)
        indices = np.arange(0, n, step, dtype=np.float32).astype(np.int32)
        rows = rows[indices]
    elif n > l_secs:
        if split == "train":
            indices = rnd.sample(range(0, n), l_secs)
            indices.sort()
            rows = rows[indices]
        else:
            step = n / float(l_secs)
            indices = np.arange(0, n, step, dtype=np.float32).astype(np.int32)
            rows = rows[indices]
    return rows


@pytest.mark.parametrize("seconds", [10, 64, 600, 37, 1000])
def test_evaluation_and_stretch_equal_the_authors(seconds):
    ours = segment_indices(seconds, 64, train=False)
    assert ours.tolist() == authors_indices(seconds, 64, "test", random.Random(0)).tolist()
    # and the closed form: floor(i * n / T), exact in integers (T = 64 is a power of two)
    assert ours.tolist() == [i * seconds // 64 for i in range(64)]
    if seconds <= 64:  # shorter (or equal) videos: training stretches them the same way
        rng = np.random.default_rng(0)
        assert segment_indices(seconds, 64, True, rng).tolist() == authors_indices(seconds, 64, "train",
                                                                                  random.Random(0)).tolist()


def test_their_float32_arange_is_kept_and_cut_to_t():
    """For T = 60, n = 11 their float32 arange yields 61 values, the last one 11 itself (their
    indexing raises IndexError; with their T = 64 it never happens); ours are its first 60."""
    with pytest.raises(IndexError):
        authors_indices(11, 60, "test", random.Random(0))
    theirs = np.arange(0, 11, 11 / float(60), dtype=np.float32).astype(np.int32)
    assert len(theirs) == 61 and theirs[-1] == 11
    assert segment_indices(11, 60, train=False).tolist() == theirs[:60].tolist()


def test_training_draws_like_random_sample():
    """A 10-min video: 64 distinct sorted segments, each segment drawn with probability 64 / 600 -
    the inclusion probability of ``random.sample`` - and the same draw for the same generator."""
    n, T, draws = 600, 64, 3000
    counts = np.zeros(n)
    ref = np.zeros(n)
    rnd = random.Random(1)
    for d in range(draws):
        idx = segment_indices(n, T, True, np.random.default_rng(d))
        assert len(idx) == T and len(set(idx.tolist())) == T and np.all(np.diff(idx) > 0) and idx.max() < n
        counts[idx] += 1
        ref[authors_indices(n, T, "train", rnd)] += 1
    p = T / n
    sd = np.sqrt(draws * p * (1 - p))
    assert np.abs(counts - draws * p).max() < 5 * sd and np.abs(ref - draws * p).max() < 5 * sd
    assert abs(counts.mean() - ref.mean()) < 1e-9  # both take exactly T per draw
    assert segment_indices(n, T, True, np.random.default_rng(7)).tolist() == \
        segment_indices(n, T, True, np.random.default_rng(7)).tolist()


def test_segments_cover_the_whole_video_where_a_window_sees_its_middle():
    """Breakfast at 15 fps, a 10-min video, 64 frames: segments sampling takes the centre frame of
    segments spread over all 600 s; the old 64-s centred window saw 268-332 s."""
    fps, n_frames = 15.0, 9000
    seg = ClipSpec(mode="val", frames=64, seconds=64.0, sampling="segments", segment_seconds=1.0)
    (plan,) = plan_clips(seg, n_frames, fps, np.random.default_rng(0))
    idx, bounds = plan["video"]
    want = [int((s + 0.5) * fps) for s in segment_indices(600, 64, train=False)]
    assert idx.tolist() == want and bounds == (0.0, 600.0)
    assert idx[0] < 15 and idx[-1] > 8800
    (win,) = plan_clips(ClipSpec(mode="val", frames=64, seconds=64.0), n_frames, fps, np.random.default_rng(0))
    assert win["video"][0][0] >= 268 * fps and win["video"][0][-1] <= 332 * fps
    (tr,) = plan_clips(ClipSpec(mode="train", frames=64, sampling="segments"), n_frames, fps, np.random.default_rng(3))
    assert len(np.unique(tr["video"][0])) == 64  # 64 distinct segments, one frame each
    assert num_segments(9.99, 1.0) == 9 and num_segments(0.4, 1.0) == 1


def _run(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return r


def _records(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every record of a cache in file order, read with a plain ffcv Loader (not FeatureLoader):
    tokens (N, P, D) float32, video index (N,), bounds (N, 2)."""
    from ffcv.fields.decoders import IntDecoder, NDArrayDecoder
    from ffcv.loader import Loader, OrderOption
    toks, vids, bnds = [], [], []
    loader = Loader(str(path), batch_size=16, order=OrderOption.SEQUENTIAL, num_workers=1, drop_last=False,
                    pipelines={"tokens": [NDArrayDecoder()], "video": [IntDecoder()], "bounds": [NDArrayDecoder()],
                               "label": None})
    for tokens, video, bounds in loader:
        toks.append(np.array(tokens).view(np.float16).astype(np.float32))
        vids.append(np.array(video).reshape(-1))
        bnds.append(np.array(bounds))
    return np.concatenate(toks), np.concatenate(vids), np.concatenate(bnds)


def test_feature_cache_draws_the_segments_the_video_path_would(demo_shards, tmp_path):
    """extract_features.py caches every segment of the training videos; FeatureLoader then serves
    each video once per epoch as the T segments ``segment_indices`` draws for (seed, epoch, video),
    re-drawn every epoch. The evaluation cache (uniform segments, planned on the video path) equals
    the per-segment cache of the same videos at the uniform indices."""
    from s5video.data.features import FeatureLoader
    T = 3  # the demo's training videos have 3-4 segments of 0.5 s: draws among them, and stretches
    cfg = ["--config", "configs/demo_finetune.yaml", f"data.shards={demo_shards}", *TINY, *DATA, f"data.frames={T}"]
    every, uniform = tmp_path / "every", tmp_path / "uniform"
    r = _run("tools/extract_features.py", *cfg, "--out", str(every), "--splits", "train")
    assert "segments of" in r.stdout
    # the val videos: once as every segment (read as a training split), once as evaluation cuts them
    _run("tools/extract_features.py", *cfg, "data.train_split=val", "--out", str(every / "val"), "--splits", "val")
    _run("tools/extract_features.py", *cfg, "--out", str(uniform), "--splits", "val")
    meta = json.loads((every / "train.beton.json").read_text())
    assert meta["clips"] == "all_segments" and meta["num_tokens"] == 4 and meta["frames"] == T

    tokens, video, bounds = _records(every / "train.beton")
    names = json.loads((every / "train.beton.videos.json").read_text())
    per_video = {names[v]: np.nonzero(video == v)[0] for v in range(len(names))}
    for rows in per_video.values():  # a video's records are its segments in time order
        assert np.allclose(bounds[rows, 0], np.arange(len(rows)) * SEG)
    assert any(len(rows) > T for rows in per_video.values())  # some videos have more segments than T

    loader = FeatureLoader(str(every / "train.beton"), 2, seed=3)
    assert len(loader) == len(names) // 2
    drawn = []
    for epoch in range(2):
        seen = []
        for b in loader:
            assert b["tokens"].shape == (2, T * 4, tokens.shape[2])
            for vid, tok in zip(b["video_id"], b["tokens"]):
                rows = per_video[vid][segment_indices(len(per_video[vid]), T, True, sample_rng(3, epoch, vid))]
                torch.testing.assert_close(tok, torch.from_numpy(tokens[rows].reshape(T * 4, -1)), rtol=0, atol=0)
                seen.append(vid)
        assert len(seen) == len(set(seen)) == len(names) // 2 * 2
        drawn.append({v: segment_indices(len(per_video[v]), T, True, sample_rng(3, epoch, v)).tolist()
                      for v in seen})
    assert any(drawn[0][v] != drawn[1][v] for v in drawn[0] if v in drawn[1])  # a fresh draw each epoch

    # elastic: 2 ranks read 1 batch each, then 1 rank (and 2 -> 3) reads the rest of the epoch: no video
    # twice, each with the segments its (seed, epoch, video) draw gives, none left but the dropped tail
    for old, new in ((2, 1), (1, 3)):
        before = [FeatureLoader(str(every / "train.beton"), 2, seed=3, rank=r, world=old) for r in range(old)]
        seen = [v for x in before for v in next(iter(x))["video_id"]]
        states = [x.state_dict() for x in before]
        rest = []
        for r in range(new):
            x = FeatureLoader(str(every / "train.beton"), 2, seed=3, rank=r, world=new)
            x.load_elastic_state(states)
            share = []
            for b in x:
                for vid, tok in zip(b["video_id"], b["tokens"]):
                    rows = per_video[vid][segment_indices(len(per_video[vid]), T, True, sample_rng(3, 0, vid))]
                    torch.testing.assert_close(tok, torch.from_numpy(tokens[rows].reshape(T * 4, -1)), rtol=0, atol=0)
                    share.append(vid)
            rest.append(share)
        assert len({len(r) for r in rest}) == 1  # equal shares
        read = seen + [v for r in rest for v in r]
        assert len(read) == len(set(read)) and len(names) - 2 * new < len(read) <= len(names), (old, new, len(read))

    v_tokens, v_video, _ = _records(every / "val" / "val.beton")
    v_names = json.loads((every / "val" / "val.beton.videos.json").read_text())
    u_tokens, u_video, u_bounds = _records(uniform / "val.beton")
    u_names = json.loads((uniform / "val.beton.videos.json").read_text())
    assert sorted(v_names) == sorted(u_names) and len(u_video) == len(u_names)  # one example per video
    for i, name in enumerate(u_names):
        rows = np.nonzero(v_video == v_names.index(name))[0]
        want = v_tokens[rows[segment_indices(len(rows), T, train=False)]].reshape(T * 4, -1)
        np.testing.assert_allclose(u_tokens[i], want, rtol=2e-3, atol=2e-3)  # float16, other batches


def test_a_segments_finetune_runs_on_video_and_on_the_cache(demo_shards, tmp_path):
    from s5video.trainer.config import ConfigError, load_config
    run = tmp_path / "run"
    base = ["--config", "configs/demo_finetune.yaml", f"data.shards={demo_shards}", *TINY, *DATA]
    _run("trainer/main.py", *base, f"run.dir={run}", "train.max_steps=2", "train.eval_every_steps=100",
         "data.num_workers=0")
    res = json.loads((run / "results.json").read_text())
    assert res["test"]["videos"] == 21 and res["steps"] == 2
    _predict_matches_the_segments_evaluation(run, demo_shards, tmp_path)
    feats = tmp_path / "features"
    _run("tools/extract_features.py", *base, "--out", str(feats))
    run2 = tmp_path / "run_features"
    _run("trainer/main.py", *base, f"run.dir={run2}", "data.backend=features", f"data.features={feats}",
         "train.max_steps=2", "train.eval_every_steps=100")
    assert json.loads((run2 / "results.json").read_text())["test"]["videos"] == 21
    # a cache of windows is refused for a segments run, and the reverse, before training
    r = subprocess.run([sys.executable, "trainer/main.py", *base[:-2], "data.sampling=window",
                        f"run.dir={tmp_path / 'r3'}", "data.backend=features", f"data.features={feats}"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "data.sampling: 'window'" in r.stderr and "sampling=segments" in r.stderr, r.stderr
    with pytest.raises(ConfigError, match="data.eval_clip: 'windows' does not apply"):
        load_config(REPO / "configs/demo_finetune.yaml", [*DATA, "data.eval_clip=windows"])
    with pytest.raises(ConfigError, match="data.sampling: 'segments' applies to finetune"):
        load_config(REPO / "configs/demo_pretrain.yaml", DATA)


def _predict_matches_the_segments_evaluation(run: Path, shards: Path, tmp_path: Path) -> None:
    """predict.py on a video file of a segments model scores it as evaluation does: one clip of
    data.frames segments over the whole video (reference: the exported model over the loader's
    evaluation clip of the same shard sample)."""
    from types import SimpleNamespace

    from s5video.data.cpu import iter_shard
    from s5video.data.loader import VideoLoader
    from s5video.data.sources import resolve_shards
    from s5video.models.exported import load_exported
    from s5video.trainer.evaluate import eval_clip_spec
    model_path = tmp_path / "segments.safetensors"
    _run("tools/export.py", str(run), "--out", str(model_path))
    model = load_exported(model_path)
    samples = [s for url in resolve_shards(str(shards), "test").urls for s in iter_shard(url)][:2]
    files = []
    for s in samples:
        f = tmp_path / f"{s['__key__']}.mp4"
        f.write_bytes(s["mp4"])
        files.append(f)
    r = _run("tools/predict.py", "--model", str(model_path), *map(str, files), "--json")
    rows = {Path(x["video"]).name: x for x in map(json.loads, r.stdout.splitlines())}
    d = SimpleNamespace(**model.config["data"])
    loader = VideoLoader(str(shards), "test", eval_clip_spec(d), batch_size=4, image_size=d.image_size,
                         mean=model.encoder.mean, std=model.encoder.std, num_workers=0, finite=True)
    ref = {}
    with torch.no_grad():
        for batch in loader:
            for vid, p in zip(batch["video_id"], model(batch["video"]).softmax(-1)):
                ref[vid] = p
    loader.close()
    for s, f in zip(samples, files):
        row = rows[f.name]
        assert len(row["windows"]) == 1 and row["windows"][0]["segments"] == d.frames, row["windows"]
        vid = json.loads(s["json"]).get("key", s["__key__"])
        torch.testing.assert_close(torch.tensor(row["scores"]), ref[vid], rtol=1e-4, atol=1e-4)
