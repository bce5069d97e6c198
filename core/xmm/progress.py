"""Progress of long work (training steps, feature encoding, evaluation, data generation) on stderr.

On a terminal, a tqdm bar with its rate and ETA. Anywhere else (a log file, a pipe, CI), one plain line when the work
starts, then one every ``XMM_PROGRESS_EVERY`` seconds (default 30), then one when it ends::

    [train align] 40/150 steps (27%) | loss 2.913 | 11.2 samples/s | 0:01:23 elapsed | ETA 0:03:51

``XMM_NO_PROGRESS=1`` turns both off; ``XMM_PROGRESS=lines`` forces lines on a terminal too, ``XMM_PROGRESS=bar``
forces the bar. The rate and ETA are over the work done since the progress began (a resumed run counts from where it
resumed), so a slow first step (loading, compiling, a cold cache) weighs less as the work goes on.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, TextIO

DEFAULT_EVERY_S = 30.0


def progress_mode(stream: TextIO | None = None) -> str:
    """``"bar"``, ``"lines"`` or ``"off"`` for ``stream`` (stderr) under the ``XMM_*PROGRESS*`` variables."""
    if os.environ.get("XMM_NO_PROGRESS", "") not in ("", "0"):
        return "off"
    forced = os.environ.get("XMM_PROGRESS", "").strip().lower()
    if forced in ("bar", "lines", "off"):
        return forced
    stream = stream or sys.stderr
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        tty = False
    return "bar" if tty else "lines"


def line_interval() -> float:
    """Seconds between two progress lines (``XMM_PROGRESS_EVERY``, default 30; at least 0)."""
    try:
        return max(0.0, float(os.environ.get("XMM_PROGRESS_EVERY", DEFAULT_EVERY_S)))
    except ValueError:
        return DEFAULT_EVERY_S


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (``?`` when unknown)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Progress:
    """Progress over ``total`` units (``None``: unknown) of one piece of work named ``desc``.

    :meth:`update` counts units done and sets named fields shown beside the count (``loss=2.9``,
    ``samples_s=11.2`` is shown as ``11.2 samples/s``). ``enabled=False`` (another process than the main one) shows
    nothing. ``stream`` (default stderr) and ``mode`` (default :func:`progress_mode`) are for tests.
    """

    def __init__(self, total: int | None, *, desc: str = "", unit: str = "step", initial: int = 0, enabled: bool = True,
                 stream: TextIO | None = None, mode: str | None = None, every: float | None = None) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = initial
        self.fields: dict[str, Any] = {}
        self._initial = initial
        self._stream = stream
        self._mode = "off" if not enabled else (mode or progress_mode(stream))
        self._every = line_interval() if every is None else every
        self._start = time.perf_counter()
        self._last_line = self._start
        self._bar: Any = None
        self._closed = False
        if self._mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                             file=stream or sys.stderr)
        elif self._mode == "lines":
            self._write(self.line(started=True))

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def rate(self) -> float:
        """Units per second since the progress began (0.0 before the first unit)."""
        done = self.n - self._initial
        return done / self.elapsed if done > 0 and self.elapsed > 0 else 0.0

    def eta(self) -> float:
        """Seconds left at :meth:`rate` (``nan`` when the total or the rate is unknown)."""
        rate = self.rate()
        if self.total is None or rate <= 0:
            return math.nan
        return max(0, self.total - self.n) / rate

    def line(self, *, started: bool = False, finished: bool = False) -> str:
        """One plain progress line (what a non-terminal sees)."""
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        parts = [f"[{self.desc}] {count} {self.unit}s{pct}"]
        if started:
            return parts[0] + " started"
        for k, v in self.fields.items():
            parts.append(f"{_fmt(v)} samples/s" if k == "samples_s" else f"{k} {_fmt(v)}")
        if self.rate() > 0 and "samples_s" not in self.fields:
            parts.append(f"{self.rate():.3g} {self.unit}s/s")
        parts.append(f"{format_duration(self.elapsed)} elapsed")
        parts.append("done" if finished else f"ETA {format_duration(self.eta())}")
        return " | ".join(parts)

    def update(self, n: int = 1, **fields: Any) -> None:
        """Count ``n`` more units done; ``fields`` replace the shown values of the same names."""
        if self._closed:
            return
        self.n += n
        self.fields.update({k: v for k, v in fields.items() if v is not None})
        if self._bar is not None:
            if self.fields:
                self._bar.set_postfix({k: _fmt(v) for k, v in self.fields.items()}, refresh=False)
            self._bar.update(n)
        elif self._mode == "lines":
            now = time.perf_counter()
            # the last unit's line is the one close() writes
            if now - self._last_line >= self._every and (self.total is None or self.n < self.total):
                self._last_line = now
                self._write(self.line())

    def close(self) -> None:
        """End the bar, or write the last line (units done, time taken)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self._mode == "lines":
            self._write(self.line(finished=True))

    def _write(self, text: str) -> None:
        stream = self._stream or sys.stderr
        stream.write(text + "\n")
        stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def quiet_third_party_bars() -> None:
    """Hide the progress bars of Hugging Face libraries (transformers' "Loading weights", hub downloads) for this
    process; ``xmm -v`` leaves them on. An explicit ``HF_HUB_DISABLE_PROGRESS_BARS`` in the environment wins."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] in ("0", "false", "False"):
        return
    # the variable is read when these libraries are imported; ones imported already are told directly
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
