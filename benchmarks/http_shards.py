#!/usr/bin/env python
"""Training throughput with the shards read over HTTP (nginx on this machine) vs from the local disk.

Runs the demo finetune as a user does (``trainer/main.py``, one rank, the same config as
benchmarks/feature_path.py) three times on the same shards: from the directory, from
``http://127.0.0.1:PORT/`` with ``data.cache_dir`` (fetched once, then read from the cache), and
over HTTP without a cache (every pass refetches). Prints clips/s, data-wait % and the ratio to
the local run.

    python benchmarks/http_shards.py --shards cache/demo_shards [--steps 40] [--json]
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.feature_path import demo_run_args, train  # noqa: E402
from tests.nginx import Nginx  # noqa: E402


def main() -> int:
    a = demo_run_args(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        server = Nginx((REPO / a.shards).resolve(), tmp / "nginx").start()
        try:
            rows = [("local disk", train(tmp / "local", a.shards, a.steps)),
                    ("http + data.cache_dir",
                     train(tmp / "cached", server.url, a.steps, f"data.cache_dir={tmp / 'cache'}")),
                    ("http, no cache", train(tmp / "stream", server.url, a.steps))]
        finally:
            server.stop()
    base = rows[0][1]["clips_per_s"]
    for name, r in rows:
        r["ratio_vs_local"] = r["clips_per_s"] / base
        if a.json:
            print(json.dumps({"source": name, **r}))
    if not a.json:
        print(f"{'source':<24}{'clips/s':>9}{'data-wait %':>13}{'vs local':>10}")
        for name, r in rows:
            print(f"{name:<24}{r['clips_per_s']:>9.1f}{r['data_wait_pct']:>13.1f}{r['ratio_vs_local']:>9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
