#!/usr/bin/env python
"""Training-step throughput and memory of ViS4mer, S5 (keep ratio 0.5) and LST, as in ViS4mer's Table 3.

One step = forward + backward + AdamW step on random tokens (B, L, width) on the paper's (60, s, s)
grid (60 frames; s = 1, 5, 7, 14 for 60 / 1,500 / 2,940 / 11,760 tokens), so ViS4mer and LST use the
paper's max_st pooling; S5 pools its kept tokens with avg1d. Every (model, tokens)
pair runs in a fresh process. ``peak_mem_mb`` is the peak of live tensor memory during a training
step (parameters, optimizer state, input, activations, gradients, temporaries): CUDA
``max_memory_allocated`` on a GPU; on CPU the same quantity from the profiler's allocation events
over one extra step. ``peak_rss_mb`` (CPU) is the growth of the process's max RSS, which adds what
glibc malloc keeps of freed blocks and the FFT/BLAS libraries' own buffers. Prints JSON lines
``{"model", "tokens", "width", "samples_per_s", "peak_mem_mb", ...}`` and a table with ratios vs LST.

    python benchmarks/models.py --device cpu [--width 128] [--json]
    python benchmarks/models.py --device cuda            # paper dims: width 1024, bf16 autocast

Paper Table 3 (RTX A6000, 11,760 tokens): ViS4mer 2.63x faster and 8x less memory than LST.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODELS = ("lst", "lst_full", "vis4mer", "s5", "performer", "orthoformer")
TOKENS = (60, 1500, 2940, 11760)
FRAMES = 60  # the paper's 60 one-second frames: tokens = 60 x s x s on a (60, s, s) grid


def token_grid(tokens: int) -> tuple[int, int, int] | None:
    """(60, s, s) when ``tokens`` = 60 s^2 (the paper's sweep: s = 1, 5, 7, 14), else None."""
    s = round((tokens / FRAMES) ** 0.5)
    return (FRAMES, s, s) if FRAMES * s * s == tokens else None


def one(model: str, tokens: int, width: int, batch: int, device: str, min_seconds: float, bf16: bool,
        **model_kw) -> dict:
    """Measure in this process (called in a fresh subprocess). ``model_kw`` go to ``create_model``
    (e.g. pool, channel_scaling)."""
    import torch

    from s5video.models import create_model

    torch.manual_seed(0)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kw = dict(num_classes=10, d_model=width, depth=3, **model_kw)
    if model == "s5":
        kw.update(keep_ratio=0.5)
    m = create_model(model, **kw).to(device).train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    x = torch.randn(batch, tokens, width, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    grid = token_grid(tokens)

    def step():
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(m(x, grid=grid).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    step()
    sync()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < min_seconds:
        step()
        n += 1
    sync()
    dt = time.perf_counter() - t0
    extra = {}
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        extra["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0, 1)
        peak = _cpu_step_peak_mb(step, [*m.parameters(), *_state_tensors(opt), x, y])
    return {"model": model, "tokens": tokens, "width": width, "batch": batch, "device": device,
            "samples_per_s": round(batch * n / dt, 3), "peak_mem_mb": round(peak, 1), **extra, **model_kw}


def _state_tensors(opt) -> list:
    return [t for st in opt.state.values() for t in st.values() if hasattr(t, "nbytes")]


def _cpu_step_peak_mb(step, resident: list) -> float:
    """Peak live tensor memory (MB) of one ``step()`` on CPU: the tensors alive before it
    (``resident``: parameters, optimizer state, input) plus the highest running sum of the
    allocator's allocation/free events recorded by the profiler during the step."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    cur = top = 0
    for e in events:
        cur += e.nbytes()
        top = max(top, cur)
    return (sum(t.nbytes for t in resident) + top) / 2**20


def measure(model: str, tokens: int, width: int, batch: int, device: str, min_seconds: float, **model_kw) -> dict:
    """One row, measured in a fresh process (its own peak memory); ``{"error": ...}`` when it fails."""
    cmd = [sys.executable, os.path.abspath(__file__), "--device", device, "--width", str(width), "--batch", str(batch),
           "--min-seconds", str(min_seconds), "--_one", model, str(tokens), "--_kw", json.dumps(model_kw)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["killed (out of memory?)"])[-1]
        return {"model": model, "tokens": tokens, "width": width, "error": tail, **model_kw}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if _cuda() else "cpu")
    ap.add_argument("--width", type=int, default=None, help="token width (default 1024 on GPU, 128 on CPU)")
    ap.add_argument("--batch", type=int, default=None, help="clips per step (default 4)")
    ap.add_argument("--tokens", type=int, nargs="+", default=list(TOKENS))
    ap.add_argument("--models", nargs="+", default=["lst", "vis4mer", "s5"], choices=MODELS)
    ap.add_argument("--min-seconds", type=float, default=None, help="measure at least this long per pair")
    ap.add_argument("--json", action="store_true", help="JSON lines only")
    ap.add_argument("--_one", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--_kw", default="{}", help=argparse.SUPPRESS)
    a = ap.parse_args()
    gpu = a.device.startswith("cuda")
    width = a.width or (1024 if gpu else 128)
    batch = a.batch or 4
    min_s = a.min_seconds if a.min_seconds is not None else (5.0 if gpu else 2.0)
    if a._one:
        print(json.dumps(one(a._one[0], int(a._one[1]), width, batch, a.device, min_s, bf16=gpu, **json.loads(a._kw))))
        return 0
    rows = []
    for tokens in a.tokens:
        for model in a.models:
            row = measure(model, tokens, width, batch, a.device, min_s)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if not a.json:
        print(f"\n{'tokens':>7} {'model':<8} {'samples/s':>10} {'peak MB':>9} {'speed vs LST':>13} {'memory LST/x':>13}"
              f" {'RSS MB':>8}")
        for tokens in a.tokens:
            lst = next((r for r in rows if r["model"] == "lst" and r["tokens"] == tokens and "error" not in r), None)
            for r in (r for r in rows if r["tokens"] == tokens):
                if "error" in r:
                    print(f"{tokens:>7} {r['model']:<8} error: {r['error']}")
                    continue
                sp = r["samples_per_s"] / lst["samples_per_s"] if lst else float("nan")
                mem = lst["peak_mem_mb"] / max(r["peak_mem_mb"], 1e-3) if lst else float("nan")
                print(f"{tokens:>7} {r['model']:<8} {r['samples_per_s']:>10.2f} {r['peak_mem_mb']:>9.1f} "
                      f"{sp:>12.2f}x {mem:>12.2f}x {r.get('peak_rss_mb', float('nan')):>8.1f}")
    return 0


def _cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main())
