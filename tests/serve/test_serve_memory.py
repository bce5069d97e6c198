"""The server's memory stays flat: oneDNN's primitive cache is bounded (one compiled kernel per new input shape, which
otherwise grows the RSS of a batching server for thousands of requests) before the first forward pass, a limit from
the environment is kept, oneDNN honours a limit set after ``import torch``; free heap pages go back to the system once
the server has been idle for a moment."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import urllib.request

import pytest
from xmm.serve.memory import CAPACITY_VARS, SERVE_PRIMITIVE_CACHE, bound_primitive_cache, release_free_memory
from xmm_serve_testkit import image_message

# a bf16 matmul of shapes 3, 5, 3 rows: with a cache of one primitive the third is compiled again
PROBE = """
import os, sys, torch
if sys.argv[1] == "bound":
    from xmm.serve.memory import bound_primitive_cache
    bound_primitive_cache(1)
layer = torch.nn.Linear(64, 64)
with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
    for rows in (3, 5, 3):
        layer(torch.randn(rows, 64))
"""


@pytest.fixture
def no_limit(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in CAPACITY_VARS:
        monkeypatch.setenv(var, "")  # recorded, so what the code under test sets is undone after the test
        monkeypatch.delenv(var)
    return monkeypatch


def test_the_limit_is_set_when_the_environment_has_none(no_limit):
    assert bound_primitive_cache() == str(SERVE_PRIMITIVE_CACHE)
    assert os.environ[CAPACITY_VARS[0]] == str(SERVE_PRIMITIVE_CACHE)


@pytest.mark.parametrize("var", CAPACITY_VARS)
def test_a_limit_from_the_environment_is_kept(no_limit, var):
    no_limit.setenv(var, "4096")
    assert bound_primitive_cache() == "4096"
    assert os.environ[var] == "4096"
    assert all(os.environ.get(v) is None for v in CAPACITY_VARS if v != var)


def test_create_app_bounds_the_cache(no_limit, serve_model):
    from xmm.serve import create_app

    create_app(serve_model)
    assert os.environ[CAPACITY_VARS[0]] == str(SERVE_PRIMITIVE_CACHE)


def _matmul_creations(mode: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in CAPACITY_VARS}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env={**env, "ONEDNN_VERBOSE": "profile_create"},
                         capture_output=True, text=True, timeout=300, check=True).stdout
    return [line.split(",")[3] for line in out.splitlines() if ",primitive,create:" in line and ",matmul," in line]


def test_onednn_honours_a_limit_set_after_import_torch():
    free = _matmul_creations("default")
    if "create:cache_hit" not in free:
        pytest.skip("torch does not run these bf16 matmuls through oneDNN's cache on this CPU")
    bound = _matmul_creations("bound")
    assert len(bound) == len(free) and set(bound) == {"create:cache_miss"}


def test_release_free_memory_on_glibc():
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc_trim is glibc's")
    assert release_free_memory() is True


def test_free_memory_is_released_after_the_server_is_idle(server, client, monkeypatch):
    released: list[float] = []
    monkeypatch.setattr("xmm.serve.batching.release_free_memory", lambda: released.append(time.monotonic()) or True)
    batcher_idle = 1.0  # Batcher's default idle_release_s

    def releases() -> int:
        return json.loads(urllib.request.urlopen(server.url + "/health", timeout=30).read())["memory_releases"]

    before = releases()
    client.chat.completions.create(model="tiny", max_tokens=2, messages=image_message())
    answered = time.monotonic()
    deadline = answered + 30
    while releases() == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert releases() == before + 1
    assert len(released) == 1 and released[0] - answered >= batcher_idle * 0.5
    time.sleep(batcher_idle * 2)  # idle on: nothing new was freed, nothing more to hand back
    assert releases() == before + 1
