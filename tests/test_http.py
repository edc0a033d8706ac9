"""Shards streamed from a real HTTP server - nginx from Debian (scripts/install_system.sh), started
here on 127.0.0.1 with a temporary config and stopped by PID - with the local shard cache."""
from __future__ import annotations

import collections
import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from data.cpu import cache_name
from data.sources import read_manifest
from tests.helpers import finish, free_port, launch

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@pytest.fixture
def nginx(demo_shards, tmp_path):
    """nginx serving the make_shards output directory as-is; yields (base URL, access log path)."""
    assert os.path.exists(NGINX), "nginx is not installed: run scripts/install_system.sh (make install does)"
    port, d = free_port(), tmp_path / "nginx"
    d.mkdir()
    conf = d / "nginx.conf"
    conf.write_text(f"""
{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  types {{ application/json json; application/x-tar tar; }}
  server {{ listen 127.0.0.1:{port}; root {demo_shards}; }}
}}
""")
    proc = subprocess.Popen([NGINX, "-e", str(d / "error.log"), "-p", str(d), "-c", str(conf)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        end = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > end:
                    pytest.fail(f"nginx did not start: {proc.communicate()[0]} {(d / 'error.log').read_text()}")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/", d / "access.log"
    finally:
        proc.terminate()  # fast shutdown of the master and its worker
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
    from data import build_loader, choose_backend
    from data.clips import ClipSpec
    assert choose_backend("auto", "http://127.0.0.1:9/shards/") == "cpu"
    with pytest.raises(ValueError, match="data.backend=cpu for remote shards"):
        build_loader("dali", "http://127.0.0.1:9/shards/", "train", ClipSpec(mode="train", frames=4, seconds=1.0),
                     batch_size=2, image_size=64)
