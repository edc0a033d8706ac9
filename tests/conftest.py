"""Shared fixtures: real demo footage (fetched once into <repo>/cache) and demo shards built per session."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOOTAGE = REPO / "cache" / "demo_footage"


def run_make_shards(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run tools/make_shards.py as a user would; returns the completed process (text output)."""
    return subprocess.run([sys.executable, str(REPO / "tools" / "make_shards.py"), *args, "--no-progress"],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="session")
def demo_footage() -> dict[str, str]:
    from s5video.tools.datasets import fetch_demo_footage
    return fetch_demo_footage(FOOTAGE)


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory, demo_footage) -> Path:
    """The real demo shards (labelled splits + unlabelled pretrain split), built once per session."""
    out = tmp_path_factory.mktemp("demo_shards")
    r = run_make_shards("demo", "--out", str(out), "--cache", str(FOOTAGE))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def pytest_collection_modifyitems(config, items):
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; this machine has none (run on a GPU machine: pytest -m gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def clip_pool(tmp_path_factory, demo_footage):
    """12 real 3-s clips cut from the demo footage (MP4, and AVI for Breakfast), for dataset fixtures."""
    from tests.real_formats import build_pool
    return build_pool(demo_footage, tmp_path_factory.mktemp("clip_pool"))
