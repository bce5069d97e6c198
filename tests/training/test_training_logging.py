"""Run logging: the loss curve is drawn with the optional `plot` extra and skipped, not fatal, without it."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from xmm.training.logging import RunLogger, plot_loss_curve, read_log

RECORDS = [{"step": s, "stage": "align" if s <= 3 else "tune", "loss": 3.0 / s, "loss/lm": 3.0 / s} for s in range(1, 7)]


def test_loss_curve_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = plot_loss_curve([{"event": "stage_start", "step": 0}, *RECORDS], tmp_path / "curve.png")
    assert out == tmp_path / "curve.png" and out.read_bytes()[:4] == b"\x89PNG"
    assert plot_loss_curve([{"event": "summary", "step": 6}], tmp_path / "none.png") is None  # no step records


def test_loss_curve_without_matplotlib_is_skipped_with_a_log_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    with caplog.at_level(logging.INFO, logger="xmm.training"):
        assert plot_loss_curve(RECORDS, tmp_path / "curve.png") is None
    assert not (tmp_path / "curve.png").exists()
    assert "'matplotlib' is not installed" in caplog.text and "xmm-core[plot]" in caplog.text


def test_run_logger_keeps_steps_up_to_a_resumed_checkpoint(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path, report_to="jsonl")
    for r in RECORDS:
        logger.log(r)
    logger.close()
    resumed = RunLogger(tmp_path, report_to="jsonl", resume_step=4)  # the killed run had logged past its checkpoint
    resumed.log(RECORDS[4])
    resumed.close()
    assert [r["step"] for r in read_log(tmp_path / "logs" / "train.jsonl")] == [1, 2, 3, 4, 5]
