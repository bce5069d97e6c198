"""How many threads xmm computes with, and how they wait: a policy that holds up on a machine shared with others.

OpenMP threads that spin while they wait for work (GNU OpenMP's default) fight other processes for shared cores; a
step that takes 6.5 s on one thread can take 20 s on two spinning ones. :func:`set_passive_wait` asks for passive
waiting through the environment, which OpenMP reads once, when torch loads it: ``import xmm`` does it, so it holds
whenever xmm is imported before torch (the ``xmm`` command always is). A value already set is left alone.

:func:`apply_threads` sets torch's thread count from a plan's or the command line's ``threads``: a number, or
``auto`` (also the default when ``OMP_NUM_THREADS`` is unset) = the cores that are free now (the cores this process
may run on, less what other processes keep busy, at least one). No torch import at module level: this is a leaf module.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


def set_passive_wait() -> None:
    """Ask OpenMP (and the Hugging Face tokenizers' thread pool) not to spin or oversubscribe; effective when called
    before torch is imported, a no-op for variables already set."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # data loader workers fork the process; the tokenizers' own pool would warn and could deadlock after a fork
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def free_cores(window: float = 0.25) -> int:
    """Cores not busy with other processes' work now, at least 1: measured over ``window`` seconds from the
    system's CPU counters less this process's own use (Linux), else the available cores less the one-minute load
    average (which counts this process too)."""
    cores = available_cores()
    busy = _others_busy(window)
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except (AttributeError, OSError):
            return cores
    online = os.cpu_count() or cores
    return max(1, min(cores, online - int(busy + 0.5)))


def _others_busy(window: float) -> float | None:
    """Cores other processes kept busy over ``window`` seconds (from ``/proc/stat``); None where unreadable."""
    import time

    def sample() -> tuple[float, float, float]:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
        idle = fields[3] + fields[4]
        own = os.times()
        return (sum(fields) - idle) / ticks, own.user + own.system, time.monotonic()

    try:
        ticks = os.sysconf("SC_CLK_TCK")
        busy0, own0, t0 = sample()
        time.sleep(window)
        busy1, own1, t1 = sample()
    except (OSError, ValueError, AttributeError, IndexError):
        return None
    elapsed = max(t1 - t0, 1e-3)
    return max(0.0, (busy1 - busy0) - (own1 - own0)) / elapsed


def parse_threads(value: str) -> int | str:
    """A ``--threads`` value: ``auto`` or a positive number; ValueError otherwise."""
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"threads must be a positive number or 'auto', got {value!r}")
    return int(value)


def resolve_threads(threads: int | str | None) -> int | None:
    """The thread count ``threads`` asks for: an int as given, ``auto`` = :func:`free_cores`; None = ``auto`` unless
    ``OMP_NUM_THREADS`` is set (then torch's own choice, which follows it: None is returned)."""
    if threads is None:
        if os.environ.get("OMP_NUM_THREADS"):
            return None
        threads = "auto"
    if isinstance(threads, str):
        if threads != "auto":
            raise ValueError(f"threads must be a positive number or 'auto', got {threads!r}")
        return free_cores()
    if threads < 1:
        raise ValueError(f"threads must be a positive number or 'auto', got {threads}")
    return int(threads)


def apply_threads(threads: int | str | None) -> int | None:
    """Set torch's intra-op thread count as :func:`resolve_threads` says; returns the count set (None: unchanged)."""
    n = resolve_threads(threads)
    if n is None:
        return None
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
        log.info("computing with %d thread(s)", n)
    return n


def use_threads(threads: int | str) -> int | None:
    """For a whole command (``--threads``): :func:`apply_threads`, and ``OMP_NUM_THREADS`` set to the count so
    that what the command starts (worker processes, a run's own thread setting left unset) follows it."""
    n = apply_threads(threads)
    if n is not None:
        os.environ["OMP_NUM_THREADS"] = str(n)
    return n


@contextmanager
def threads_for(threads: int | str | None) -> Iterator[int | None]:
    """:func:`apply_threads` for the block; torch's previous thread count is restored after it."""
    import torch

    before = torch.get_num_threads()
    try:
        yield apply_threads(threads)
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
