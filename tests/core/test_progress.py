"""xmm.progress: a bar on a terminal, a line every N seconds elsewhere, nothing when turned off; the Hugging Face
libraries' own bars quiet unless `xmm -v`."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from xmm.progress import Progress, format_duration, progress_mode


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("env", "tty", "mode"), [
    ({}, False, "lines"), ({}, True, "bar"), ({"XMM_NO_PROGRESS": "1"}, True, "off"),
    ({"XMM_PROGRESS": "lines"}, True, "lines"), ({"XMM_PROGRESS": "bar"}, False, "bar"),
    ({"XMM_NO_PROGRESS": "0"}, False, "lines"),
])
def test_mode_follows_the_stream_and_the_environment(monkeypatch: pytest.MonkeyPatch, env, tty, mode) -> None:
    monkeypatch.delenv("XMM_NO_PROGRESS", raising=False)
    monkeypatch.delenv("XMM_PROGRESS", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert progress_mode(_Tty() if tty else io.StringIO()) == mode


def test_lines_start_repeat_and_end_with_counts_rate_and_eta() -> None:
    out = io.StringIO()
    with Progress(10, desc="train align", unit="step", stream=out, mode="lines", every=0) as bar:
        bar.update(4, loss=2.5, samples_s=12.0)
        bar.update(6, loss=1.25)
    lines = out.getvalue().splitlines()
    assert lines[0] == "[train align] 0/10 steps (0%) started"
    assert lines[1].startswith("[train align] 4/10 steps (40%) | loss 2.5 | 12 samples/s | ")
    assert "ETA" in lines[1]
    # the last unit's line is the closing one (no "ETA 0:00:00" line before it)
    assert lines[2].startswith("[train align] 10/10 steps (100%) | loss 1.25 | 12 samples/s")
    assert lines[2].endswith("| done") and len(lines) == 3


def test_lines_wait_for_the_interval_and_a_resumed_count_starts_where_it_was() -> None:
    out = io.StringIO()
    bar = Progress(100, desc="eval", unit="example", initial=40, stream=out, mode="lines", every=3600)
    for _ in range(30):
        bar.update(1)
    bar.close()
    bar.close()  # twice is harmless
    lines = out.getvalue().splitlines()
    assert lines[0] == "[eval] 40/100 examples (40%) started"
    assert len(lines) == 2 and lines[1].startswith("[eval] 70/100 examples (70%) | ")  # no line in between
    assert bar.rate() > 0 and bar.n == 70


def test_unknown_total_and_disabled_progress() -> None:
    out = io.StringIO()
    bar = Progress(None, desc="scan", unit="file", stream=out, mode="lines", every=0)
    bar.update(3)
    assert "[scan] 3 files | " in out.getvalue() and "ETA ?" in out.getvalue()
    quiet = io.StringIO()
    off = Progress(5, desc="x", stream=quiet, enabled=False)
    off.update(5)
    off.close()
    assert quiet.getvalue() == ""


def test_bar_on_a_terminal() -> None:
    out = _Tty()
    with Progress(3, desc="cache encode", unit="item", stream=out, mode="bar") as bar:
        bar.update(3, loss=0.5)
    assert "cache encode" in out.getvalue() and "3/3" in out.getvalue()


@pytest.mark.parametrize(("seconds", "text"), [(0, "0:00:00"), (61.4, "0:01:01"), (3725, "1:02:05"),
                                               (float("nan"), "?"), (-1, "?")])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("verbose", [False, True])
def test_cli_quiets_hugging_face_bars_unless_verbose(verbose: bool) -> None:
    """The `xmm` root callback turns the Hugging Face libraries' bars off before any of them is imported."""
    code = ("import sys; from xmm.cli.main import app\n"
            "from typer.testing import CliRunner\n"
            f"r = CliRunner().invoke(app, {['-v', 'plugins'] if verbose else ['plugins']!r})\n"
            "assert r.exit_code == 0, r.output\n"
            "from transformers.utils import logging\n"
            "print(logging.is_progress_bar_enabled())")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip().splitlines()[-1] == str(verbose)
