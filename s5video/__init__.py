"""s5video: long-form video models (ViS4mer, S5 = Selective S4, LSMCL) trained from streamed shards.

The import names are ``s5video.trainer``, ``s5video.models``, ``s5video.data``, ``s5video.launchers``
and ``s5video.tools``; their code lives in the repository's top-level folders of those names
(setup.py's ``package_dir`` maps them, so nothing named ``models`` or ``data`` lands at the top of
site-packages). In a source checkout, whether installed or not, this package also looks in the
folder above it, so ``import s5video.models`` works from the repository root as well.
"""
from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"
SUBPACKAGES = ("trainer", "models", "data", "launchers", "tools")

_checkout = Path(__file__).resolve().parent.parent
if not (Path(__file__).resolve().parent / "trainer").is_dir() and (_checkout / "trainer" / "main.py").is_file():
    __path__.append(str(_checkout))  # a source checkout: s5video.<folder> is <repo>/<folder>
