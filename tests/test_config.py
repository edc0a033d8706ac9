"""Typed YAML configs: inheritance, overrides, errors that name the key, every shipped config loads."""
from pathlib import Path

import pytest
import yaml

from s5video.trainer.config import Config, ConfigError, load_config, save_config

CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml") if p.name != "base.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.run.dir != Config().run.dir, "each config names its own run.dir"
    assert cfg.data.shards


def test_required_configs_exist():
    names = {p.stem for p in CONFIGS}
    assert {"k600_pretrain", "coin", "breakfast", "charades", "demo_pretrain", "demo_finetune"} <= names
    lvu = {p.stem for p in CONFIGS if p.parent.name == "lvu"}
    assert lvu == {"relationship", "speaking", "scene", "director", "writer", "year", "genre", "like", "view"}


def test_inheritance_order_and_overrides(tmp_path):
    (tmp_path / "a.yaml").write_text("train: {max_steps: 5, lr: 0.5}\ndata: {batch_size: 3}\n")
    (tmp_path / "b.yaml").write_text("train: {max_steps: 7}\n")
    (tmp_path / "c.yaml").write_text("base: [a.yaml, b.yaml]\ndata: {batch_size: 4}\n")
    cfg = load_config(tmp_path / "c.yaml", ["train.lr=0.25", "checkpoint.resume=none", "run.dir=/x/y"])
    assert cfg.train.max_steps == 7  # later parent wins
    assert cfg.data.batch_size == 4  # the file wins over its parents
    assert cfg.train.lr == 0.25  # CLI wins over the files
    assert cfg.train.warmup_steps == Config().train.warmup_steps  # untouched default
    assert (cfg.checkpoint.resume, cfg.run.dir) == ("none", "/x/y")
    assert load_config(None, ["train.lr=3e-3"]).train.lr == 0.003  # YAML 1.1 reads 3e-3 as a string


def test_unknown_key_names_closest(tmp_path):
    (tmp_path / "c.yaml").write_text("train: {max_step: 5}\n")
    with pytest.raises(ConfigError, match=r"train\.max_step.*max_steps"):
        load_config(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match=r"chekpoint.*checkpoint"):
        load_config(None, ["chekpoint.every_steps=3"])


def test_wrong_type_and_disallowed_value():
    with pytest.raises(ConfigError, match=r"train\.max_steps: expected an integer"):
        load_config(None, ["train.max_steps=ten"])
    with pytest.raises(ConfigError, match=r"data\.backend: 'gpu' is not allowed; allowed values: 'auto', 'dali', 'cpu'"):
        load_config(None, ["data.backend=gpu"])
    with pytest.raises(ConfigError, match=r"train\.zero_stage"):
        load_config(None, ["train.zero_stage=4"])
    with pytest.raises(ConfigError, match=r"model\.keep_ratio"):
        load_config(None, ["model.keep_ratio=1.5"])
    with pytest.raises(ConfigError, match="key must be section.key"):
        load_config(None, ["max_steps=3"])


def test_circular_base_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("base: [b.yaml]\n")
    (tmp_path / "b.yaml").write_text("base: [a.yaml]\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "a.yaml")


def test_resolved_config_written_and_reloads(tmp_path):
    cfg = load_config(Path(CONFIGS[0]), [f"run.dir={tmp_path}/run", "train.max_steps=3"])
    path = save_config(cfg, cfg.run.dir)
    assert path == tmp_path / "run" / "config.yaml"
    again = load_config(path)
    assert again == cfg
    assert yaml.safe_load(path.read_text())["train"]["max_steps"] == 3


def test_trainer_reads_the_world_size_from_slurm_before_the_elastic_check(monkeypatch):
    """Under a plain srun (SLURM_PROCID / SLURM_NTASKS, no WORLD_SIZE yet) the elastic check sees
    Slurm's task count, not 1."""
    import os

    import s5video.trainer.run as run
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    monkeypatch.setattr(os, "environ", {**env, "SLURM_PROCID": "1", "SLURM_NTASKS": "3", "SLURM_LOCALID": "0"})
    seen = []

    class Stop(Exception):
        pass

    def check(cfg, world):
        seen.append(world)
        raise Stop

    monkeypatch.setattr(run, "preflight", lambda cfg: {})
    monkeypatch.setattr(run, "elastic_resume", check)
    with pytest.raises(Stop):
        run.Trainer(load_config(None, []))._run()
    assert seen == [3]
