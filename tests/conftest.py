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


# The slow tier (`make test-slow`; .ci/run runs both): further cases of code paths that the default
# tier (`make test`, <= 12 min on a 2-core machine) already runs once. The representative that stays
# is named after each group.
SLOW = {
    # one-line errors before anything runs: test_own_data.py::test_bad_settings_are_one_line_errors
    "test_own_data.py::test_busy_master_port_is_one_line",
    # ViS4mer's paper-scale shapes (d 1024, 60 x 197 tokens): test_pooling_stops_at_one_token, test_authors_block.py
    "test_models.py::test_vis4mer_paper_shapes_avg1d_and_max_st",
    # export and predict of a trained run: the [vis4mer-zero3] cases (S5 is exported in test_own_data.py)
    "test_export.py::test_exported_model_equals_the_engine_on_the_test_clips[s5-zero1]",
    "test_export.py::test_predict_answers_files_like_the_shard_path_and_reports_a_bad_file[s5-zero1]",
    # augmentation on DALI against the CPU path: test_loader.py::test_random_resized_crop_boxes_follow_their_ranges_and_the_clip_shares_one_draw
    "test_dali.py::test_dali_augmentation_matches_the_cpu_backend",
    # resume after a kill: test_sigterm_saves_and_exits_cleanly_then_resumes
    "test_trainer.py::test_ten_sigkill_resume_cycles_match_uninterrupted",
    # ZeRO stages: [2] here, 3 in the elastic-eval and export tests
    "test_trainer.py::test_two_rank_zero_stages_loss_decreases[1]",
    "test_trainer.py::test_two_rank_zero_stages_loss_decreases[3]",
    # launcher exit: torchrun
    "test_trainer.py::test_killed_launcher_leaves_no_process[deepspeed]",
    # elastic resume: the engine test (ZeRO 1-3) and the eval/finetune on another world size
    "test_trainer.py::test_elastic_pretrain_2_to_1_ranks_reads_each_sample_of_the_pass_once",
    # demo configs: demo_finetune and demo_pretrain (the same trainer paths as the others)
    "test_trainer.py::test_every_demo_config_runs_on_demo_shards[configs/demo_finetune_scratch.yaml]",
    "test_trainer.py::test_every_demo_config_runs_on_demo_shards[configs/demo_finetune_vis4mer.yaml]",
    "test_trainer.py::test_every_demo_config_runs_on_demo_shards[configs/demo_caption.yaml]",
    # feature caches: test_cached_windows_equal_on_the_fly, test_import_features (training on a cache)
    "test_features.py::test_feature_path_reports_the_video_paths_metrics[val]",
    "test_features.py::test_feature_path_reports_the_video_paths_metrics[test]",
    "test_features.py::test_finetune_from_the_cache_alone",
    "test_features.py::test_two_ranks_read_every_record_once_and_resume",
    "test_segments.py::test_a_segments_finetune_runs_on_video_and_on_the_cache",
    "test_segments.py::test_feature_cache_draws_the_segments_the_video_path_would",
    # the web page (selenium + chromium): predict.py's tests answer the same videos
    "test_app.py::test_page_answers_like_predict_py_and_survives_a_broken_file",
    # own data from a CSV: test_own_data.py's tests
    "test_end_to_end.py::test_bring_your_own_csv_finetune_and_evaluate",
    # shards over HTTP: test_network_faults_are_retried_or_reported
    "test_http.py::test_train_val_test_from_http_with_local_cache",
    # Slurm: test_slurm_pretrain_on_two_nodes_preempted_requeued_and_finished
    "test_launcher.py::test_slurm_pipeline_finetune_waits_for_pretrain_and_starts_from_it",
    # reliability: corrupt samples, crash in save, NaN under accumulation
    "test_reliability.py::test_fewer_shards_than_ranks",
    # paper configs: k600_pretrain, breakfast, charades, lvu_view
    "test_paper_configs.py::test_paper_config_from_real_format_to_test_metrics[coin]",
    "test_paper_configs.py::test_paper_config_from_real_format_to_test_metrics[charades_videomamba]",
    "test_paper_configs.py::test_paper_config_from_real_format_to_test_metrics[charades_caption]",
    "test_paper_configs.py::test_paper_config_from_real_format_to_test_metrics[charades_svt]",
    "test_paper_configs.py::test_paper_config_from_real_format_to_test_metrics[lvu_like]",
    "test_paper_configs.py::test_paper_config_from_real_format_to_test_metrics[lvu_relationship]",
    # every registered model trains: width 16
    "test_factory.py::test_every_registered_model_trains_from_a_config[32]",
}


@pytest.hookimpl(tryfirst=True)  # before -m "not slow" deselects
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.removeprefix("tests/") in SLOW:
            item.add_marker(pytest.mark.slow)
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
