"""What `pip install .` puts in site-packages: one package, s5video, whose subpackages are the
repository's top-level folders - no top-level `models`, `data`, `trainer`, `tools` or `launchers`
to shadow a user's own modules (issue 26 item 5). Built with pip itself, imported from the wheel."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_one_s5video_package(tmp_path):
    src = tmp_path / "src"  # a copy: setuptools builds in the source tree (build/, *.egg-info)
    src.mkdir()
    shutil.copy(REPO / "setup.py", src)
    for d in ("s5video", "trainer", "models", "data", "launchers", "tools"):
        shutil.copytree(REPO / d, src / d, ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next(tmp_path.glob("s5video-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"s5video", wheel.name.split("-py")[0] + ".dist-info"}
    for sub in ("trainer/run.py", "models/registry.py", "data/loader.py", "launchers/submit.py", "tools/export.py"):
        assert f"s5video/{sub}" in names, sub
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "s5video-train = s5video.trainer.main:main" in entry
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = ("import importlib.util, s5video.models, s5video.trainer.config; "
             "print(s5video.models.__file__); print([importlib.util.find_spec(n) for n in "
             "('models', 'data', 'trainer', 'tools', 'launchers')]); "
             "print(sorted(s5video.models.list_models())[:2])")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout.splitlines()
    assert out[0] == str(site / "s5video" / "models" / "__init__.py")
    assert out[1] == "[None, None, None, None, None]"
    assert out[2] == "['bimamba', 'bimamba_debug']"
