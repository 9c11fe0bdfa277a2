"""Experiment loggers: the jsonl file, the error for a missing backend, dashboard gauges."""

import json
import sys

import numpy as np
import pytest

from stagent_ray.loggers import dashboard_metric_name, emit_dashboard_metrics, make_logger


def test_jsonl_logger_appends_lines(tmp_path):
    run_dir = str(tmp_path / "run")
    logger = make_logger("jsonl", run_dir)
    logger.log({"loss": 0.5, "lr": np.float32(1e-3), "stage": "sft0"}, step=1)
    logger.log({"loss": 0.25}, step=2)
    logger.close()
    # A resumed run keeps appending to the same file.
    logger = make_logger("jsonl", run_dir)
    logger.log({"loss": 0.125}, step=3)
    logger.close()

    lines = (tmp_path / "run" / "logs" / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["loss"] for r in rows] == [0.5, 0.25, 0.125]
    assert rows[0]["lr"] == pytest.approx(1e-3) and rows[0]["stage"] == "sft0"
    assert all("time" in r for r in rows)


def test_jsonl_logger_on_a_uri_run_dir(tmp_path):
    # file:// goes through the object-store branch (whole-file rewrites, no appends).
    run_dir = (tmp_path / "run").as_uri()
    for step in range(2):
        logger = make_logger("jsonl", run_dir)
        logger.log({"reward": step / 2}, step=step)
        logger.close()
    rows = [json.loads(line) for line in
            (tmp_path / "run" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["reward"]) for r in rows] == [(0, 0.0), (1, 0.5)]


def test_none_logger_and_unknown_kind(tmp_path):
    logger = make_logger("none", str(tmp_path))
    logger.log({"x": 1}, step=0)
    logger.close()
    assert not (tmp_path / "logs").exists()
    with pytest.raises(ValueError, match="unknown logger kind 'csv'"):
        make_logger("csv", str(tmp_path))


@pytest.mark.parametrize("kind", ["wandb", "mlflow", "tensorboard"])
def test_missing_backend_names_the_package(tmp_path, monkeypatch, kind):
    # A None entry in sys.modules makes `import <kind>` fail as if it were not installed,
    # whatever this machine has.
    monkeypatch.setitem(sys.modules, kind, None)
    with pytest.raises(ImportError, match=f"pip install {kind}"):
        make_logger(kind, str(tmp_path))


def test_dashboard_metric_names():
    assert dashboard_metric_name("final_loss") == "stagent_stage_final_loss"
    assert dashboard_metric_name("funnel_kept/semantic") == "stagent_stage_funnel_kept_semantic"


def test_emit_dashboard_metrics_without_ray_is_a_noop():
    import ray

    if ray.is_initialized():
        pytest.skip("Ray is already running in this process")
    assert emit_dashboard_metrics("pool", {"pool": 40}) == []


@pytest.mark.ray
def test_emit_dashboard_metrics_in_ray(ray_session):
    metrics = {"final_loss": 0.41, "steps": 12, "pass_rate": np.float64(0.5),
               "funnel": {"generated": 120, "kept": 40}, "path": "/x", "mfu": None,
               "resumed": True}
    names = emit_dashboard_metrics("sft0", metrics)
    assert sorted(names) == ["stagent_stage_final_loss", "stagent_stage_funnel_generated",
                             "stagent_stage_funnel_kept", "stagent_stage_pass_rate",
                             "stagent_stage_steps"]
    # Same names from another stage reuse the cached gauges.
    assert emit_dashboard_metrics("sft1", {"final_loss": 0.3}) == ["stagent_stage_final_loss"]


@pytest.mark.ray
def test_report_progress_prints_a_line_and_sets_gauges(ray_session, capsys):
    from stagent_ray.loggers import _GAUGES, report_progress

    line = report_progress("sft0", 3, 10, 2.0, {"loss": 1.23456, "tokens_per_s": 1500.0})
    assert line == "[sft0] step 3/10 loss 1.235 tokens_per_s 1500 eta 0m14s"
    assert capsys.readouterr().out.strip() == line  # stdout: what `ray job logs` shows
    assert {"stagent_stage_step", "stagent_stage_total_steps", "stagent_stage_eta_s",
            "stagent_stage_loss", "stagent_stage_tokens_per_s"} <= set(_GAUGES)
    assert report_progress("rl", 6, 6, 9.0, {"reward": 0.5}).endswith("eta 0m00s")
