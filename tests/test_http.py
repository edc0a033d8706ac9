"""Shards streamed from a real HTTP server - nginx from Debian (scripts/install_system.sh), started
here on 127.0.0.1 with a temporary config and stopped by PID - with the local shard cache."""
from __future__ import annotations

import collections
import hashlib
import json
import re
import time
from pathlib import Path

import pytest

from s5video.data.cpu import cache_name
from s5video.data.sources import read_manifest
from tests.fault_proxy import FaultProxy
from tests.helpers import finish, launch, repack
from tests.nginx import Nginx


@pytest.fixture
def nginx(demo_shards, tmp_path):
    """nginx serving the demo shards; yields (base URL, access log path)."""
    server = Nginx(demo_shards, tmp_path / "nginx").start()
    try:
        yield server.url, server.access_log
    finally:
        server.stop()


def _gets(access_log: Path) -> collections.Counter:
    """GET requests per path with status 200, from nginx's combined log format."""
    out = collections.Counter()
    for line in access_log.read_text().splitlines():
        request, status = line.split('"')[1], line.split('"')[2].split()[0]
        if request.startswith("GET ") and status == "200":
            out[request.split()[1]] += 1
    return out


def test_train_val_test_from_http_with_local_cache(nginx, demo_shards, tmp_path):
    url, access_log = nginx
    manifest = read_manifest(url)
    assert manifest == json.loads((demo_shards / "manifest.json").read_text())  # the manifest over HTTP
    train = manifest["splits"]["train"]
    per_epoch = train["num_samples"] // (4 * 2)  # TINY batch 4, 2 ranks
    run, cache = tmp_path / "run", tmp_path / "cache"
    p = launch(run, url, f"data.cache_dir={cache}", f"train.max_steps={3 * per_epoch}",
               f"train.eval_every_steps={per_epoch}", "checkpoint.every_steps=1000")
    finish(p, run_dir=run)
    results = json.loads((run / "results.json").read_text())
    assert results["test"]["videos"] == manifest["splits"]["test"]["num_samples"]
    assert "top1" in results["test"] and "top1" in results["val"]
    gets = _gets(access_log)
    readers = 2 * 1  # ranks x decode workers (TINY: data.num_workers=1)
    for shard in train["shards"]:
        # three passes over the train split read the shard; the cache fetched it at most once per
        # reader (the first pass, concurrently), never again on later passes
        assert 1 <= gets[f"/{shard}"] <= readers, gets
        cached = cache / cache_name(url + shard)
        assert hashlib.sha256(cached.read_bytes()).digest() == \
            hashlib.sha256((demo_shards / shard).read_bytes()).digest()
    for split in ("val", "test"):  # evaluated 3 times (val) and once (test): fetched once per rank at most
        for shard in manifest["splits"][split]["shards"]:
            assert 1 <= gets[f"/{shard}"] <= 2, gets


def test_remote_shards_choose_the_cpu_backend_and_dali_refuses_them():
    from s5video.data import build_loader, choose_backend
    from s5video.data.clips import ClipSpec
    assert choose_backend("auto", "http://127.0.0.1:9/shards/") == "cpu"
    with pytest.raises(ValueError, match="data.backend=cpu for remote shards"):
        build_loader("dali", "http://127.0.0.1:9/shards/", "train", ClipSpec(mode="train", frames=4, seconds=1.0),
                     batch_size=2, image_size=64)


def test_network_faults_are_retried_or_reported(demo_shards, tmp_path):
    """2 ranks stream (no cache: every pass refetches) through the fault proxy: a shard cut mid-transfer
    and one answered 500 twice are retried and read whole; a shard answering 404 is skipped and counted
    in results.json; nginx stopped for 20 s mid-run and started again is waited out. The run ends."""
    shards = repack(demo_shards, tmp_path / "shards", {"train": [16, 16, 16, 15]})
    server = Nginx(shards, tmp_path / "nginx").start()
    faults = {"/train-000000.tar": ["drop"], "/train-000001.tar": [500, 500], "/train-000003.tar": [404]}
    run, log = tmp_path / "run", tmp_path / "run.log"
    try:
        with FaultProxy(server.url, faults, forever={"/train-000003.tar"}) as proxy:
            p = launch(run, proxy.url, "train.max_steps=40", "train.eval_every_steps=20", "checkpoint.every_steps=1000",
                       log=log)
            metrics = run / "metrics.jsonl"
            end = time.monotonic() + 240
            while not (metrics.exists() and metrics.read_text().count('"split": "train"') >= 3):
                assert p.poll() is None and time.monotonic() < end, log.read_text()[-3000:]
                time.sleep(0.5)
            server.stop()  # the server goes away for 20 s ...
            time.sleep(20)
            server.start()  # ... and comes back on the same port
            finish(p, timeout=400, run_dir=run)
    finally:
        server.stop()
    out = log.read_text()
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 40 and results["test"]["videos"] == 21 and results["val"]["videos"] == 21
    skipped = set(re.findall(r"skipping shard (\S+)", out))
    assert skipped == {proxy.url + "train-000003.tar"}, skipped  # only the missing shard is given up
    assert results["bad_shards_skipped"] >= 1  # once per pass that met it, on the reader that did
    assert proxy.injected["/train-000000.tar"] == 1 and proxy.injected["/train-000001.tar"] == 2
    assert re.search(r"train-000000.tar: OSError: .*(closed after|IncompleteRead)", out)  # the cut was noticed
    assert proxy.unreachable >= 1  # requests met the stopped server and were retried
