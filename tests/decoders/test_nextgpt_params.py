"""The trainable-vs-frozen figure of a NExT-GPT-like setup with the real SmolLM2 (benchmarks/nextgpt_params.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "nextgpt_params.py"


@pytest.mark.slow
@pytest.mark.llm
def test_nextgpt_like_parameter_budget():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout[proc.stdout.index("{"):])
    # SD 1.5's conditioning and its published component sizes (UNet 859.5M + VAE 83.7M + CLIP text 123.1M)
    assert r["condition_shape"] == [77, 768]
    assert r["frozen"]["decoder:image"] == 859_520_964 + 83_653_863 + 123_060_480
    # SmolLM2-135M's own weights are all frozen; only 4 signal-token rows of width 576 are new
    assert 130e6 < r["frozen"]["llm"] < 140e6
    assert r["trainable"]["llm:embeddings:new"] == 4 * 576
    assert r["trainable"]["bridge:image"] == 1280 * 576 + 576
    assert 25e6 < r["trainable"]["projector:image"] < 36e6
    assert r["trainable_total"] == sum(r["trainable"].values())
    total = r["trainable_total"] + r["frozen_total"]
    assert r["trainable_share"] == pytest.approx(r["trainable_total"] / total)
    assert r["trainable_share"] < 0.05  # a few percent, against NExT-GPT's 1.25% with a 50x larger LLM
