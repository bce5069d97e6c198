"""The thread policy (passive OpenMP waiting, threads = free cores, a plan/CLI setting) and bf16 only where the CPU
computes it natively (issue 18)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch
import xmm.threads as threads
from xmm.model import numerics


def test_import_asks_for_passive_waiting_unless_set() -> None:
    code = "import os, xmm; print(os.environ['OMP_WAIT_POLICY'], os.environ['TOKENIZERS_PARALLELISM'])"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "TOKENIZERS_PARALLELISM")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["PASSIVE", "false"]
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == "ACTIVE"


def test_free_cores_follow_the_load(monkeypatch: pytest.MonkeyPatch) -> None:
    busy = threads._others_busy(0.05)
    assert busy is None or busy >= 0.0
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(threads, "_others_busy", lambda window: 2.6)
    assert threads.free_cores() == 5
    monkeypatch.setattr(threads, "_others_busy", lambda window: None)  # no /proc/stat: the load average
    monkeypatch.setattr(os, "getloadavg", lambda: (30.0, 0.0, 0.0))
    assert threads.free_cores() == 1
    assert threads.resolve_threads("auto") == 1 and threads.resolve_threads(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.resolve_threads(None) is None  # the environment's choice stands
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert threads.resolve_threads(None) == 1
    for bad in (0, "many"):
        with pytest.raises(ValueError, match="threads must be"):
            threads.resolve_threads(bad)  # type: ignore[arg-type]


def test_threads_for_restores_the_count() -> None:
    before = torch.get_num_threads()
    with threads.threads_for(before + 1) as n:
        assert n == before + 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before


def test_plan_threads_setting_is_validated() -> None:
    from xmm.errors import ConfigError
    from xmm.training.plan import load_plan

    plan = {"model": {"llm": "x", "modalities": {}}, "stages": [{"trainable": ["bridge:*"], "data": {"train": "t"},
                                                                  "max_steps": 1}]}
    assert load_plan({**plan, "threads": "auto"}, import_plugins=False).threads == "auto"
    assert load_plan({**plan, "threads": 2}, import_plugins=False).threads == 2
    with pytest.raises(ConfigError, match="threads"):
        load_plan({**plan, "threads": 0}, import_plugins=False)


@pytest.mark.parametrize("env", [{"ATEN_CPU_CAPABILITY": "avx2"}, {"ONEDNN_MAX_CPU_ISA": "AVX2"}])
def test_a_capped_cpu_counts_as_one_without_bf16(env: dict[str, str]) -> None:
    code = "from xmm.model.numerics import cpu_supports_bf16; print(cpu_supports_bf16())"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def test_auto_is_fp32_and_explicit_bf16_warns_on_a_cpu_without_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(numerics, "cpu_supports_bf16", lambda: False)
    numerics._warn_slow_bf16.cache_clear()
    cpu = torch.device("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert numerics.autocast_enabled("auto", cpu) is False
        assert numerics.autocast_enabled("off", cpu) is False
    with pytest.warns(RuntimeWarning, match="without native bf16"):
        assert numerics.autocast_enabled("bf16", cpu) is True
    monkeypatch.setattr(numerics, "cpu_supports_bf16", lambda: True)
    assert numerics.autocast_enabled("auto", cpu) is True
