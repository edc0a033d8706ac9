"""Helpers shared by the tests that run the trainer as real processes.

* ``TINY``: overrides that make any demo config a seconds-per-step model on 2 shared CPU cores.
* :func:`launch` / :func:`finish`: the trainer under ``torchrun`` or ``deepspeed`` (2 CPU ranks),
  each run on a free port; :func:`finish` fails a run that does not exit in time and kills its
  whole process tree, ranks and decode workers included (torchrun starts each rank in its own
  session: killing the launcher's process group does not reach them).
* :func:`process_tree`, :func:`kill_tree`: processes by PID from ``/proc``.
* :func:`train_losses`, :func:`train_loss_rows`: losses from ``metrics.jsonl``.
* :func:`repack`: a copy of a shard directory with splits re-packed into other shard sizes.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import webdataset as wds

from s5video.trainer.lifecycle import proc_stat

REPO = Path(__file__).resolve().parents[1]
TINY = ["run.init_from=null", "model.width=32", "model.depth=2", "model.state_size=8", "data.image_size=64",
        "data.frames=4", "data.batch_size=4", "data.num_workers=1", "logging.every_steps=1",
        "logging.progress_bar=false", "train.warmup_steps=2", "train.global_batch_size=0"]
# A run must exit within this many seconds of writing results.json (trainer.run.EXIT_DEADLINE_S).
EXIT_WITHIN_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(run_dir: Path, shards: Path, *overrides: str, nproc: int = 2, config: str = "configs/demo_finetune.yaml",
           entry: tuple[str, ...] = ("trainer/main.py",), launcher: str = "torchrun", tiny: bool = True,
           log: Path | None = None, port: int | None = None) -> subprocess.Popen:
    """The trainer (or another ``entry``, e.g. ``tests/fault_run.py FAULT``) on ``nproc`` CPU ranks under
    ``torchrun`` or the ``deepspeed`` runner, in a new session, on ``port`` (default: a free one);
    output to a pipe, or to ``log``."""
    port = str(port or free_port())
    front = {"torchrun": ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", port],
             "deepspeed": ["-m", "deepspeed.launcher.runner", "--num_gpus", str(nproc), "--master_port", port]}
    cmd = [sys.executable, *front[launcher], *entry, "--config", config, f"run.dir={run_dir}",
           f"data.shards={shards}", *(TINY if tiny else []), *overrides]
    out = open(log, "w") if log else subprocess.PIPE
    return subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants now alive (from /proc), parents first."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        st = proc_stat(int(d.name)) if d.name.isdigit() else None
        if st:
            children.setdefault(st[1], []).append(int(d.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        out.append(pid)
        todo += children.get(pid, [])
    return out


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Poll until none of ``pids`` is alive (a zombie counts as gone); returns those still alive."""
    end = time.monotonic() + timeout
    alive = list(pids)
    while alive:
        alive = [p for p in alive if (proc_stat(p) or ("Z",))[0] != "Z"]
        if not alive or time.monotonic() > end:
            break
        time.sleep(0.1)
    return alive


def kill_tree(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def finish(p: subprocess.Popen, timeout: float = 300, ok: bool = True, run_dir: Path | None = None) -> str:
    """Wait for a launched run; its output. Fails (killing every process of the run) past ``timeout``;
    with ``ok``, fails on a non-zero exit. With ``run_dir``, also fails when the run exited more than
    EXIT_WITHIN_S after writing its results.json."""
    tree: list[int] = []
    end = time.monotonic() + timeout
    while p.poll() is None and time.monotonic() < end:
        tree = sorted(set(tree) | set(process_tree(p.pid)))
        time.sleep(0.5)
    if p.poll() is None:
        kill_tree(process_tree(p.pid) + tree)
        p.communicate()
        pytest.fail(f"run did not end within {timeout} s (all its processes killed)")
    exited = time.time()
    out = p.communicate()[0] or ""
    if ok:
        assert p.returncode == 0, out[-4000:]
    still = wait_gone([x for x in tree if x != p.pid], 10)
    assert not still, f"processes of the run still alive after the launcher exited: {still}"
    if run_dir is not None and (Path(run_dir) / "results.json").exists():
        lag = exited - (Path(run_dir) / "results.json").stat().st_mtime
        assert lag < EXIT_WITHIN_S, f"run exited {lag:.1f} s after writing results.json"
    return out


def train_loss_rows(run_dir: Path) -> list[tuple[int, float]]:
    """Every logged (step, train loss), in log order (a resumed run re-logs the steps after its checkpoint)."""
    rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if r["split"] == "train"]


def train_losses(run_dir: Path) -> dict[int, float]:
    """step -> loss of the last logged occurrence."""
    return dict(train_loss_rows(run_dir))


def repack(src: Path, out: Path, layout: dict[str, list[int]], corrupt: set[int] = frozenset(),
           only: bool = False) -> Path:
    """Copy of the shard directory ``src`` where each split in ``layout`` is re-packed (no re-encode) into
    shards of the given sizes (0 = an empty shard); samples of a re-packed split at positions in
    ``corrupt`` get random bytes instead of their video. Other splits are linked unchanged, or left
    out with ``only``."""
    m = json.loads((src / "manifest.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    for split, entry in list(m["splits"].items()):
        if split not in layout:
            if only:
                del m["splits"][split]
            else:
                for s in entry["shards"]:
                    os.symlink(src / s, out / s)
            continue
        samples = list(wds.WebDataset([str(src / s) for s in entry["shards"]], shardshuffle=False))
        assert sum(layout[split]) == len(samples), (split, len(samples))
        names, pos = [], 0
        for i, n in enumerate(layout[split]):
            names.append(f"{split}-{i:06d}.tar")
            with wds.TarWriter(str(out / names[-1])) as w:
                for j in range(pos, pos + n):
                    s = samples[j]
                    w.write({"__key__": s["__key__"], "mp4": os.urandom(len(s["mp4"])) if j in corrupt else s["mp4"],
                             "json": s["json"]})
            pos += n
        m["splits"][split] = {**entry, "shards": names, "shard_samples": layout[split], "num_samples": pos}
    (out / "manifest.json").write_text(json.dumps(m))
    return out


def stub_shards(out: Path, splits: dict[str, int], classes: list[str] | None = None,
                task: str = "classification") -> Path:
    """A make_shards output directory with only its manifest.json (what plan-time checks read)."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"version": 1, "dataset": "stub", "classes": list(classes or []), "task": task,
                "splits": {s: {"shards": [f"{s}-000000.tar"], "shard_samples": [n], "num_samples": n}
                           for s, n in splits.items()}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def paper_stubs(root: Path) -> dict[str, list[str]]:
    """Per stage of the Kinetics-600 pipeline, the overrides that point it at a stub manifest with the
    config's own splits, classes and task, and at a (stub) ViT-L/16 weights directory."""
    from s5video.launchers.tasks import task_config
    from s5video.trainer.config import load_config
    weights = root / "vit-l16"
    weights.mkdir(parents=True, exist_ok=True)
    pre = load_config(REPO / "configs" / "k600_pretrain.yaml")
    out = {"pretrain": [f"pretrain:data.shards={stub_shards(root / 'k600', {'train': 4000, 'val': 300, 'test': 600})}"]}
    for task in pre.launch.finetunes:
        cfg = load_config(REPO / task_config(task))
        n = cfg.model.num_classes
        classes = [f"c{i}" for i in range(n)] if cfg.model.task != "regression" else []
        d = stub_shards(root / task, {"train": 800, "val": 100, "test": 100}, classes, cfg.model.task)
        out[task] = [f"{task}:data.shards={d}"]
    out["common"] = [f"model.encoder_weights={weights}"]
    return out



def export_new_model(config: str, overrides: list[str], classes: list[str], out: Path) -> Path:
    """A model of ``config`` as the trainer builds it (fresh weights, seed 0), written by the exporter's
    writer: the page and predict.py must agree on any weights; training and export are tested elsewhere.
    A captioner is first fitted to one caption (on random tokens) so that it says something."""
    import torch

    from s5video.models.encoders import create_encoder
    from s5video.models.exported import save_exported
    from s5video.models.factory import build_model, head_classes
    from s5video.trainer.config import load_config, to_dict
    torch.manual_seed(0)
    cfg = load_config(config, overrides)
    encoder = create_encoder(cfg.model.encoder, None, cfg.model.frame_tokens, cfg.model.spatial_grid)
    model = build_model(cfg.model, encoder.dim, head_classes("finetune", cfg.model.task, 0, classes))
    if cfg.model.task == "captioning":
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for _ in range(60):
            loss = model(torch.randn(4, 2, encoder.dim), captions=["a demo clip."] * 4)
            opt.zero_grad()
            loss.backward()
            opt.step()
    save_exported(out, model.state_dict(), to_dict(cfg), classes, source="tests", step="0")
    return out
