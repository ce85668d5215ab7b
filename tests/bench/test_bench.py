"""The benchmark CLI runs its step suites end to end and writes ratios that are real measurements."""

from __future__ import annotations

import json

import pytest

from src.bench.__main__ import main
from tests.helpers.jobs import TRAINER_SHRINK, tiny

TIMING = ["--steps", "2", "--warmup", "1", "--rounds", "1"]


@pytest.mark.slow
def test_step_suites_write_side_by_side_ratios(tmp_path, capsys):
    out = tmp_path / "bench.json"
    tiny = ["--backbone", "resnet10t", "--image-size", "32", "--batch-size", "4"]
    assert main(["freeze", *tiny, *TIMING, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["suite"] for r in rows] == ["freeze", "freeze"]
    for r in rows:
        assert r["a"] > 0 and r["b"] > 0 and r["ratio"] == r["a"] / r["b"]
    assert rows[0]["goal"] == 1.5 and rows[1]["goal"] is None
    assert "freeze" in capsys.readouterr().out


@pytest.mark.slow  # a real training job, timed
def test_overhead_times_the_composed_job_against_a_raw_loop(tmp_path, monkeypatch):
    """train(cfg) of the default job (shrunk), timed between its own batches, runs to the end."""
    from src.bench.overhead import StepTimer

    out = tmp_path / "bench.json"
    job = tiny("dataset.batch_size=8", without=TRAINER_SHRINK)  # the bench shrinks the trainer
    monkeypatch.setattr(StepTimer, "seconds", [])
    args = ["overhead", *(f"--job={o}" for o in job), *TIMING, "--json", str(out)]
    assert main(args) == 0
    (overhead,) = json.loads(out.read_text())["rows"]
    assert overhead["goal"] == 0.95 and overhead["ratio"] == overhead["a"] / overhead["b"]
    assert "default callbacks, MLflow, progress bar" in overhead["measure"]
    assert "tf_efficientnet_lite0 32px b8" in overhead["measure"]
    (seconds,) = StepTimer.seconds  # one timed job, 2 steps at 8 images each
    assert overhead["a"] == 2 * 8 / seconds


@pytest.mark.slow
def test_cache_suites_compare_whole_runs_side_by_side(tmp_path):
    out = tmp_path / "bench.json"
    job = tiny("trainer.limit_train_batches=2", without=TRAINER_SHRINK)
    assert (
        main(["prefix_cache", "probe_cache", *(f"--job={o}" for o in job), "--json", str(out)]) == 0
    )
    rows = json.loads(out.read_text())["rows"]
    assert [r["suite"] for r in rows] == ["prefix_cache"] * 4 + ["probe_cache"] * 3
    assert "partial -2 uncached / cached (cold)" in rows[0]["measure"] and rows[0]["goal"] == 5.0
    assert "partial -2 uncached / cached (warm" in rows[1]["measure"] and rows[1]["goal"] is None
    assert "linear_probe uncached / cached (cold)" in rows[2]["measure"]
    assert rows[4]["goal"] == 9.0 and rows[6]["goal"] == 0.9 and rows[6]["unit"] == "img/s"
    assert all(r["a"] > 0 and r["b"] > 0 for r in rows)
