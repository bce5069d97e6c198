"""When a model runs under bf16 autocast: ``MultimodalConfig.autocast`` against what the device computes natively."""

from __future__ import annotations

import functools
import os
import warnings
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal

import torch

# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) under which its bf16 matmuls still run natively
_ONEDNN_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512",
                     "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL", "DEFAULT")


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is far slower than fp32.

    A process whose kernels are capped below that (``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2``) counts
    as such a CPU: its bf16 matmuls then run the slow emulated path too.
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    if not any(bool(getattr(torch.cpu, c, lambda: False)()) for c in checks):
        return False
    capability = torch.backends.cpu.get_cpu_capability().upper()
    if not capability.startswith("AVX512"):
        return False
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    return not isa or isa in _ONEDNN_BF16_ISAS


def autocast_enabled(mode: Literal["auto", "bf16", "off"], device: torch.device) -> bool:
    """``bf16``: always (with a warning, once, on a CPU without native bf16); ``off``: never; ``auto``: on CUDA
    devices with bf16 and on CPUs with native bf16."""
    if mode != "auto":
        if mode == "bf16" and device.type == "cpu" and not cpu_supports_bf16():
            _warn_slow_bf16()
        return mode == "bf16"
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu" and cpu_supports_bf16()


@functools.lru_cache(maxsize=1)
def _warn_slow_bf16() -> None:
    warnings.warn("bf16 autocast was asked for on a CPU without native bf16 (no AVX512-BF16/AMX): its bf16 matmuls "
                  "run many times slower than fp32; use autocast 'auto' (or mixed_precision 'auto') to train in fp32 "
                  "here", RuntimeWarning, stacklevel=3)


def autocast(mode: Literal["auto", "bf16", "off"], device: torch.device) -> AbstractContextManager[Any]:
    """A bf16 ``torch.autocast`` on ``device`` when :func:`autocast_enabled`, else a no-op context."""
    if not autocast_enabled(mode, device):
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
