"""Every config key does something: each field of the config dataclasses is read by code outside
trainer/config.py (its validation does not count). Found by walking the syntax trees of the
packages: ``<...>.section.key``, or ``x.key`` where ``x = <...>.section`` in the same function; the
``model.*`` keys of ``models.factory.CONFIG_ARGS`` and ``PRETRAIN_ARGS`` count too (tests/test_factory.py checks that
each reaches a constructor argument)."""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from s5video.models.factory import CONFIG_ARGS, PRETRAIN_ARGS
from s5video.trainer.config import Config

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("trainer", "data", "models", "launchers", "tools")


def _reads(tree: ast.AST, sections: set[str]) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    scopes = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    for scope in [tree, *scopes]:
        alias: dict[str, str] = {}
        for n in ast.walk(scope):
            if not isinstance(n, ast.Assign):
                continue
            pairs = [(t, n.value) for t in n.targets]  # x = a.section; x, y = a, a.section
            pairs += [(t, v) for t in n.targets if isinstance(t, ast.Tuple) and isinstance(n.value, ast.Tuple)
                      for t, v in zip(t.elts, n.value.elts)]
            for t, v in pairs:
                if isinstance(t, ast.Name) and isinstance(v, ast.Attribute) and v.attr in sections:
                    alias[t.id] = v.attr
        for n in ast.walk(scope):
            if not isinstance(n, ast.Attribute):
                continue
            v = n.value
            if isinstance(v, ast.Attribute) and v.attr in sections:
                found.add((v.attr, n.attr))
            elif isinstance(v, ast.Name) and v.id in alias:
                found.add((alias[v.id], n.attr))
    return found


def test_every_config_key_is_read_by_code():
    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    keys = {(s, k.name) for s in sections for k in dataclasses.fields(getattr(Config(), s))}
    read: set[tuple[str, str]] = set()
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            if path == REPO / "trainer" / "config.py":
                continue
            read |= _reads(ast.parse(path.read_text()), set(sections))
    read |= {("model", k) for mapping in CONFIG_ARGS.values() for k in mapping}
    read |= {("model", k) for k in PRETRAIN_ARGS}
    unread = sorted(f"{s}.{k}" for s, k in keys - read)
    assert not unread, f"config keys that no code reads (implement or remove them): {unread}"
