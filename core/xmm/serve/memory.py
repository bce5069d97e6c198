"""A long-running server's resident memory kept flat: oneDNN's cache of compiled kernels bounded, and the heap's free
pages handed back to the system when the server goes idle.

On CPU, PyTorch runs bf16 matmuls and convolutions through oneDNN, which compiles a kernel (a "primitive") for each
new input shape and keeps it in a process-wide cache, 1024 primitives unless ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` says
otherwise. A batching server meets new shapes in many of its batches (rows x padded prompt length in the LLM, images
per batch in an encoder, question length in a question-guided bridge), so with that default the cache, and the
server's RSS with it, keeps growing for thousands of requests before it stops. A cache holding a few batches' kernels
stops growing within the first batches; a shape that comes back after it was evicted is compiled again, which is cheap
next to a generation step.

glibc's malloc keeps the pages a batch freed, so without more, the idle server's RSS stays at what its largest batch
needed. :func:`release_free_memory` returns them; the batcher calls it once the queue has been empty for a moment, so a
busy server never pays for it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
from typing import Any

log = logging.getLogger(__name__)

# oneDNN reads the first of these that is set (the second is its older name)
CAPACITY_VARS = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "DNNL_PRIMITIVE_CACHE_CAPACITY")
SERVE_PRIMITIVE_CACHE = 128


def bound_primitive_cache(capacity: int = SERVE_PRIMITIVE_CACHE) -> str:
    """Limit oneDNN's primitive cache to ``capacity`` primitives unless the environment already sets a limit (then that
    one is kept); returns the limit in force.

    oneDNN reads the limit once, when it creates its first primitive, so this must run before the model's first forward
    pass in the process (:func:`xmm.serve.app.create_app` calls it; ``xmm serve`` loads the model without running it).
    """
    for var in CAPACITY_VARS:
        value = os.environ.get(var)
        if value:
            log.debug("oneDNN primitive cache: %s=%s from the environment", var, value)
            return value
    os.environ[CAPACITY_VARS[0]] = str(capacity)
    return str(capacity)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or None (musl, macOS, Windows)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return getattr(libc, "malloc_trim", None)


def release_free_memory() -> bool:
    """Hand the heap's free pages back to the system (glibc); False where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
