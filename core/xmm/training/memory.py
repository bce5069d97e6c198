"""glibc's allocator, tuned for training on the CPU: large tensors reuse freed memory instead of fresh pages.

glibc serves every allocation above its mmap threshold (at most 32 MiB, dynamically adjusted) with a fresh ``mmap``
and unmaps it again on free. A training step allocates and frees the same large tensors every time - the
activations of a conv encoder (``[16, 96, 112, 112]`` fp32 is 77 MB), a vocabulary-sized gradient (a Q-Former text
branch over SmolLM2's 49k tokens: 50 MB) - so each step page-faults all of them in again, a large share of an
encoder-bound step (figures in this folder's README). Raising the mmap threshold (and the trim threshold with it, so
that the heap is not handed back to the kernel after every step) keeps such blocks in the heap for reuse; the peak
RSS stays the same (the pages are alive at the peak either way).

:func:`tune_cpu_allocator` does that once per process, on Linux with glibc; ``XMM_MALLOC_TUNING=0`` turns it off.
It changes the allocation policy of the whole process: up to ``trim_threshold`` bytes of freed heap stay mapped.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 << 20  # blocks up to this size come from the heap (and are reused)
TRIM_THRESHOLD = 512 << 20  # free heap above this much at the top is returned to the kernel

_tuned: bool | None = None


def tune_cpu_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); returns whether they are in effect."""
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if os.environ.get("XMM_MALLOC_TUNING", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError) as e:  # no such library or symbol: leave the allocator alone
        log.debug("glibc allocator tuning unavailable: %s", e)
        return False
    _tuned = ok
    log.debug("glibc allocator: mmap threshold %d, trim threshold %d (%s)", MMAP_THRESHOLD, TRIM_THRESHOLD,
              "set" if ok else "refused")
    return ok
