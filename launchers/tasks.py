"""Finetune task names -> config files, for ``launchers/submit.py finetune TASK...``.

A task is a config under ``configs/``: ``coin``, ``breakfast``, ``charades``, the nine LVU tasks
as ``lvu_<task>`` (``configs/lvu/<task>.yaml``) and the demo: ``demo`` (S5, initialised from the
LSMCL pretraining in a pipeline), ``demo_scratch`` (S5, no pretraining) and ``demo_vis4mer``
(plain ViS4mer, no token selection, no pretraining), ``demo_caption`` (seed 004's GPT-2 captioner). A path to a YAML file is a task too.
"""
from __future__ import annotations

from pathlib import Path

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

_SPECIAL = {"demo": "demo_finetune.yaml", "demo_scratch": "demo_finetune_scratch.yaml",
            "demo_vis4mer": "demo_finetune_vis4mer.yaml", "demo_caption": "demo_caption.yaml"}


def list_tasks() -> list[str]:
    """Every finetune task name that has a config file, sorted."""
    names = set(_SPECIAL)
    names.update(p.stem for p in CONFIGS.glob("*.yaml")
                 if p.stem not in ("base",) and not p.stem.startswith(("demo_", "k600")))
    names.update(f"lvu_{p.stem}" for p in (CONFIGS / "lvu").glob("*.yaml") if p.stem != "base")
    return sorted(names)


def task_config(task: str) -> str:
    """Config file of ``task`` (a task name or a path to a YAML file).

    Raises:
        ValueError: unknown task name; the message lists the known ones.
    """
    if task.endswith((".yaml", ".yml")):
        if not Path(task).is_file():
            raise ValueError(f"finetune task config not found: {task}")
        return task
    if task not in list_tasks():
        raise ValueError(f"unknown finetune task {task!r}; known tasks: {', '.join(list_tasks())} "
                         "(or a path to a config .yaml)")
    if task in _SPECIAL:
        path = CONFIGS / _SPECIAL[task]
    elif task.startswith("lvu_"):
        path = CONFIGS / "lvu" / f"{task[4:]}.yaml"
    else:
        path = CONFIGS / f"{task}.yaml"
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def task_name(task: str) -> str:
    """Short stage name of ``task`` (the file stem for a path)."""
    return Path(task).stem if task.endswith((".yaml", ".yml")) else task
