#!/usr/bin/env python
"""Per-rank model-state memory (parameters + gradients + optimizer state) under ZeRO stages 0-3 on
1 and 2 CPU ranks (gloo), next to the ideal of the ZeRO paper (Rajbhandari et al. 2020, Fig. 1).
Counted after the second step's backward: weights, gradients and the optimizer state of step 1 alive.

Each (stage, ranks) pair runs ``torchrun`` with a fresh process per rank: ViS4mer at width 512
(``--width``), AdamW, fp32, one training step on random tokens, then every live tensor of the
process is found by the garbage collector and its storage counted once (by address); the bytes
held before the engine existed (the input batch) are subtracted. With fp32 training and AdamW, per
parameter: 4 B weights + 4 B gradient + 8 B moments (16 B) on every rank without ZeRO; ZeRO-1
partitions the moments (4 + 4 + 8/N), ZeRO-2 also the gradients (4 + (4 + 8)/N), ZeRO-3 also the
weights (16/N). DeepSpeed's fp32 optimizer keeps its own flat fp32 partition next to the module's
weights in stages 1-2 (a copy that mixed precision needs, fp32 does not): the "measured" column
shows it. Communication buckets are sized to the model (DeepSpeed's default ZeRO-3 buckets are
fixed buffers of up to 5e8 elements, which at this size would be all one measures).

    python benchmarks/zero_memory.py [--width 512] [--json]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
IDEAL = {0: lambda n: 16, 1: lambda n: 8 + 8 / n, 2: lambda n: 4 + 12 / n, 3: lambda n: 16 / n}  # bytes/param


def live_tensor_bytes() -> int:
    """Bytes of every distinct tensor storage alive in this process (found through the gc)."""
    import torch
    seen: dict[int, int] = {}
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
                st = obj.untyped_storage()
                seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        except (RuntimeError, ReferenceError, NotImplementedError):
            continue
    return sum(seen.values())


def rank_main(stage: int, width: int, out: str) -> None:
    """One rank (run by torchrun): build, one step, count."""
    import deepspeed
    import torch
    import torch.distributed as dist

    from s5video.models import create_model
    deepspeed.init_distributed("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    x = torch.randn(2, 60 * 4, width)
    y = torch.randint(0, 10, (2,))
    gc.collect()
    base = live_tensor_bytes()
    model = create_model("vis4mer", num_classes=10, d_model=width, depth=3, d_state=16, kernel="s4d")
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config={
        "train_micro_batch_size_per_gpu": 2, "zero_allow_untested_optimizer": True,
        # communication buckets sized to the model: DeepSpeed's defaults (5e8 / 5e7 elements) are fixed
        # buffers that would dwarf a small model's state; no parameter kept whole on every rank
        "zero_optimization": {"stage": stage, "reduce_bucket_size": n_params, "allgather_bucket_size": n_params,
                              "stage3_prefetch_bucket_size": n_params, "stage3_param_persistence_threshold": 0},
        "steps_per_print": 10**9})
    for step in range(2):  # step 1 creates the optimizer state; counted after step 2's backward (grads alive)
        loss = torch.nn.functional.cross_entropy(engine(x, grid=(60, 2, 2)), y)
        engine.backward(loss)
        if step == 1:
            del loss
            gc.collect()
            held = live_tensor_bytes() - base
        engine.step()
    rows = [None] * world
    dist.all_gather_object(rows, {"rank": rank, "bytes": held})
    if rank == 0:
        Path(out).write_text(json.dumps({"stage": stage, "ranks": world, "params": n_params,
                                         "per_rank_bytes": [r["bytes"] for r in rows]}))
    engine.destroy()
    dist.destroy_process_group()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--_rank", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._rank:
        rank_main(int(a._rank[0]), a.width, a._rank[1])
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for stage in (0, 1, 2, 3):
            for n in (1, 2):
                out = os.path.join(tmp, f"{stage}-{n}.json")
                p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n),
                                    "--master_port", str(29600 + 10 * stage + n), __file__, "--width", str(a.width),
                                    "--_rank", str(stage), out], cwd=REPO, capture_output=True, text=True)
                if not os.path.exists(out):
                    raise RuntimeError(f"ZeRO {stage}, {n} ranks failed: {p.stdout[-2000:]}{p.stderr[-2000:]}")
                r = json.loads(Path(out).read_text())
                per_param = max(r["per_rank_bytes"]) / r["params"]
                r.update(bytes_per_param=round(per_param, 2), ideal_bytes_per_param=round(IDEAL[stage](n), 2))
                rows.append(r)
                if a.json:
                    print(json.dumps(r), flush=True)
    if not a.json:
        base = {r["stage"]: r for r in rows if r["ranks"] == 1}
        print(f"ViS4mer width {a.width}: {rows[0]['params']:,} parameters; fp32 + AdamW, model state per rank")
        print(f"{'ZeRO stage':>10} {'ranks':>5} {'MB/rank':>8} {'B/param':>8} {'ideal':>6} {'vs 1 rank':>10} "
              f"{'ideal vs 1 rank':>16}")
        for r in rows:
            mb = max(r["per_rank_bytes"]) / 2**20
            ratio = max(r["per_rank_bytes"]) / max(base[r["stage"]]["per_rank_bytes"])
            ideal_ratio = IDEAL[r["stage"]](r["ranks"]) / IDEAL[r["stage"]](1)
            print(f"{r['stage']:>10} {r['ranks']:>5} {mb:8.1f} {r['bytes_per_param']:8.2f} "
                  f"{r['ideal_bytes_per_param']:6.2f} {ratio:9.2f}x {ideal_ratio:15.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
