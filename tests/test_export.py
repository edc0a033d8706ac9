"""Export and predict (issue 16, items 1-2): 2-rank runs (ZeRO-3, ZeRO-1) exported to one safetensors file
gives the engine's own test predictions; predict.py on video files gives what the training data
path (webdataset shards -> loader windows) gives through the same exported model."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from s5video.data.clips import ClipSpec
from s5video.data.cpu import iter_shard
from s5video.data.loader import VideoLoader
from s5video.data.sources import resolve_shards
from s5video.models.exported import load_exported
from tests.helpers import REPO, finish, launch
from s5video.trainer.evaluate import aggregate_per_video, eval_clip_spec, per_video_predictions


def _train_and_export(shards: Path, tmp: Path, *overrides: str) -> tuple[Path, Path]:
    run = tmp / "run"
    finish(launch(run, shards, *overrides, "train.max_steps=4", "train.eval_every_steps=2", "checkpoint.every_steps=2",
                  "train.lr=3e-3", "data.clip_seconds=1.0"), run_dir=run)
    out = tmp / "model.safetensors"
    r = subprocess.run([sys.executable, "tools/export.py", str(run), "--out", str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "(step " in r.stdout and ", val), 6 classes" in r.stdout, r.stdout
    return run, out


@pytest.fixture(scope="module", params=["vis4mer-zero3", "s5-zero1"])
def exported(request, demo_shards, tmp_path_factory) -> tuple[Path, Path]:
    """Finetuned on 2 CPU ranks and exported: ViS4mer (the paper's block, max_st pooling on the
    token grid) with its weights partitioned by ZeRO-3, and S5 as the demo trains it (the authors'
    block; ZeRO-1; its momentum S4 is frozen, so zero_to_fp32's trainable partitions alone would miss it)."""
    name, stage = request.param.split("-zero")
    block = ["model.block=paper"] if name == "vis4mer" else []
    return _train_and_export(demo_shards, tmp_path_factory.mktemp(request.param), f"model.name={name}",
                             f"train.zero_stage={stage}", *block)


def test_exported_model_equals_the_engine_on_the_test_clips(exported, demo_shards):
    run, path = exported
    results = json.loads((run / "results.json").read_text())
    tag = results["selected"]["tag"]
    assert list((run / "best" / tag).glob("zero_pp_rank_1_*optim_states.pt"))  # the state was in ZeRO shards
    model = load_exported(path)
    assert "deepspeed" not in model.decoder.__class__.__module__ and model.classes == results["classes"]
    d = SimpleNamespace(**model.config["data"])
    loader = VideoLoader(str(demo_shards), d.test_split, eval_clip_spec(d), batch_size=4,
                         image_size=d.image_size, mean=model.encoder.mean, std=model.encoder.std, num_workers=0,
                         finite=True)
    ids, outs, labels = [], [], []
    for batch in loader:
        ids += batch["video_id"]
        outs.append(model(batch["video"]))
        labels.append(batch["label"])
    loader.close()
    scores, vlabels = aggregate_per_video(ids, torch.cat(outs), torch.cat(labels), "classification")
    ours = {r["video_id"]: r for r in per_video_predictions(ids, scores, vlabels, "classification")}
    engine = [json.loads(line) for line in (run / "predictions_test.jsonl").read_text().splitlines()]
    assert len(engine) == len(ours) == results["test"]["videos"]
    for r in engine:  # written by the run from the DeepSpeed engine, ranks gathered
        assert ours[r["video_id"]]["pred"] == r["pred"], r
        assert ours[r["video_id"]]["score"] == pytest.approx(r["score"], abs=1e-4), r


def test_predict_answers_files_like_the_shard_path_and_reports_a_bad_file(exported, demo_shards, tmp_path):
    _, path = exported
    model = load_exported(path)
    test = resolve_shards(str(demo_shards), "test")
    samples = [s for url in test.urls for s in iter_shard(url) if json.loads(s["json"])["duration"] >= 1.9][:2]
    files = []
    for s in samples:
        f = tmp_path / f"{s['__key__'].replace('/', '_')}.mp4"
        f.write_bytes(s["mp4"])
        files.append(f)
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(samples[0]["mp4"][:2000])  # a truncated download
    r = subprocess.run([sys.executable, "tools/predict.py", "--model", str(path), str(files[0]), str(bad),
                        str(files[1]), "--stride", "0.5", "--json"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("predict.py: ")]
    assert len(errors) == 1 and str(bad) in errors[0] and "Traceback" not in r.stderr
    rows = {Path(x["video"]).name: x for x in map(json.loads, r.stdout.splitlines())}
    assert "error" in rows["broken.mp4"]
    # the reference: the same model over the loader's windows (overlapping: 1-s windows every 0.5 s) of the shards
    d = SimpleNamespace(**model.config["data"])
    loader = VideoLoader(str(demo_shards), "test", ClipSpec(mode="windows", frames=d.frames, seconds=d.clip_seconds,
                                                            stride=0.5), batch_size=8, image_size=d.image_size,
                         mean=model.encoder.mean, std=model.encoder.std, num_workers=0, finite=True)
    probs: dict[str, list[torch.Tensor]] = {}
    for batch in loader:
        for vid, p in zip(batch["video_id"], model(batch["video"]).softmax(-1)):
            probs.setdefault(vid, []).append(p)
    loader.close()
    for s, f in zip(samples, files):
        vid = json.loads(s["json"]).get("key", s["__key__"])
        ref = torch.stack(probs[vid])  # (windows, C)
        row = rows[f.name]
        assert len(row["windows"]) == len(ref) > 1 and row["windows"][1]["start_s"] == 0.5
        torch.testing.assert_close(torch.tensor(row["scores"]), ref.mean(0), rtol=1e-4, atol=1e-4)
        top = ref.mean(0).topk(5)
        assert [a["class"] for a in row["answer"]] == [model.classes[i] for i in top.indices]
        assert [a["prob"] for a in row["answer"]] == pytest.approx(top.values.tolist(), abs=1e-4)
