"""The benchmark CLI runs its step suites end to end and writes ratios that are real measurements."""

from __future__ import annotations

import json

import pytest

from src.bench.__main__ import main


@pytest.mark.slow
def test_step_suites_write_side_by_side_ratios(tmp_path, capsys):
    out = tmp_path / "bench.json"
    tiny = ["--backbone", "resnet10t", "--image-size", "32", "--batch-size", "4"]
    timing = ["--steps", "2", "--warmup", "1", "--rounds", "1"]
    assert main(["overhead", "freeze", *tiny, *timing, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["suite"] for r in rows] == ["overhead", "freeze", "freeze"]
    for r in rows:
        assert r["a"] > 0 and r["b"] > 0 and r["ratio"] == r["a"] / r["b"]
    assert rows[0]["goal"] == 0.95 and rows[1]["goal"] == 1.5 and rows[2]["goal"] is None
    assert "overhead" in capsys.readouterr().out
