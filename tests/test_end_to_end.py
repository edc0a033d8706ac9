"""A user's own labelled videos end to end: a CSV -> make_shards.py csv -> submit.py --local finetune
-> test metrics, per-video predictions, confusion matrix and summary.json; and the summary's claims."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from s5video.launchers import summary
from tests.conftest import run_make_shards
from tests.helpers import TINY as HELPER_TINY

REPO = Path(__file__).resolve().parents[1]
TINY = HELPER_TINY + ["data.clip_seconds=1.0", "data.batch_size=2", "train.eval_every_steps=3",
                     "checkpoint.every_steps=3"]


def test_bring_your_own_csv_finetune_and_evaluate(demo_footage, tmp_path):
    # three classes of real footage, 1-second segments named by start/end (no cutting needed)
    rows = [("film", demo_footage["bbb"], s) for s in (60, 100, 140, 200, 300)] + \
           [("street", demo_footage["bikes"], s) for s in (0, 2, 4, 6, 8)] + \
           [("phone", demo_footage["carphone"], s) for s in (0, 0.8, 1.6, 2.4, 3.0)]
    splits = ["train", "train", "train", "val", "test"] * 3
    csv = tmp_path / "my_videos.csv"
    csv.write_text("path,label,split,start,end\n" + "".join(
        f"{p},{label},{sp},{s},{s + 1}\n" for (label, p, s), sp in zip(rows, splits)))
    shards = tmp_path / "my_shards"
    r = run_make_shards("csv", "--csv", str(csv), "--root", "/", "--out", str(shards))
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads((shards / "manifest.json").read_text())
    assert sorted(manifest["classes"]) == ["film", "phone", "street"]

    run = tmp_path / "runs" / "mine"
    p = subprocess.run([sys.executable, "launchers/submit.py", "--local", "finetune", "configs/demo_finetune.yaml",
                        f"data.shards={shards}", f"run.dir={run}", *TINY, "train.max_steps=6"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    assert "submitted demo_finetune" in p.stdout and "finished demo_finetune" in p.stdout
    results = json.loads((run / "results.json").read_text())
    assert results["classes"] == manifest["classes"] and results["test"]["videos"] == 3

    # per-video predictions agree with the CSV's labels, and the confusion matrix with the predictions
    preds = [json.loads(x) for x in (run / "predictions_test.jsonl").read_text().splitlines()]
    truth = {label for (label, _, _), sp in zip(rows, splits) if sp == "test"}
    assert sorted(manifest["classes"][r["label"]] for r in preds) == sorted(truth)
    conf = results["test_confusion"]
    for r in preds:
        assert conf[r["label"]][r["pred"]] >= 1
    assert sum(map(sum, conf)) == 3
    correct = sum(conf[i][i] for i in range(3))
    assert abs(correct / 3 - results["test"]["top1"]) < 1e-6
    assert (run / "confusion_test.png").stat().st_size > 0

    summ = json.loads((tmp_path / "runs" / "summary.json").read_text())
    st = summ["stages"]["demo_finetune"]
    assert abs(st["chance_top1"] - 1 / 3) < 1e-9 and st["test"]["top1"] == results["test"]["top1"]
    assert "demo_finetune" in p.stdout and "x chance" in p.stdout  # the printed table


def test_summary_checks_both_claims(tmp_path):
    """Claims are read off the runs' own results: LSMCL (init_from) vs scratch for one model, S5 vs ViS4mer."""
    def write_run(name, model, init_from, top1, pool=None):
        d = tmp_path / name
        d.mkdir()
        (d / "config.yaml").write_text(json.dumps({"model": {"name": model, "keep_ratio": 0.5, "block": "authors",
                                                             "pool": pool},
                                                   "run": {"init_from": init_from}}))
        (d / "results.json").write_text(json.dumps({"mode": "finetune", "steps": 100, "classes": list("abcdef"),
                                                    "test": {"top1": top1, "videos": 21}, "val": {"top1": top1},
                                                    "selected": {"step": 50}}))
        (d / "metrics.jsonl").write_text(json.dumps({"step": 1, "split": "train", "loss": 1.0}) + "\n")
        return d
    runs = {"demo": write_run("demo", "s5", "runs/demo/pretrain", 0.75),
            "demo_scratch": write_run("demo_scratch", "s5", None, 0.5),
            "demo_vis4mer": write_run("demo_vis4mer", "vis4mer", None, 0.6)}
    s = summary.summarize(runs)
    lsmcl, sel = s["claims"]["lsmcl_pretraining"], s["claims"]["token_selection"]
    assert (lsmcl["with"], lsmcl["without"], lsmcl["holds_here"]) == ("demo", "demo_scratch", True)
    assert abs(lsmcl["delta"] - 0.25) < 1e-9
    assert (sel["with"], sel["without"], sel["holds_here"]) == ("demo_scratch", "demo_vis4mer", False)
    assert abs(s["stages"]["demo"]["top1_x_chance"] - 4.5) < 1e-9
    text = summary.table(s)
    assert "does NOT hold" in text and "LSMCL" in text and "4.5x" in text
    # ViS4mer at another pooling than S5's: no token-selection claim (it would mix pooling with selection)
    runs["demo_vis4mer"] = write_run("demo_vis4mer_max", "vis4mer", None, 0.6, pool="max_st")
    sel = summary.summarize(runs)["claims"]["token_selection"]
    assert "holds_here" not in sel and sel["not_compared"] == "block/pooling differ: authors/avg1d vs authors/max_st"
    assert "not compared (block/pooling differ" in summary.table(summary.summarize(runs))
