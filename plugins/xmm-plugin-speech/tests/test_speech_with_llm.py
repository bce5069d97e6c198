"""The speech modality inside MultimodalLM with the real SmolLM2: encoder -> CIF/C-Former (or Q-Former) -> LLM."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from xmm_plugin_audio.testing import save_tiny_audio_model

pytestmark = [pytest.mark.slow, pytest.mark.llm]


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng missing")
@pytest.mark.parametrize("bridge", [None, {"type": "qformer", "num_queries": 8, "hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128}])
def test_lm_and_cif_losses_flow_into_the_bridge(tmp_path: Path, bridge: dict | None, smollm2: Any) -> None:
    from xmm.model import MultimodalLM
    from xmm_plugin_speech.synthetic import make_speech_dataset

    # a tiny random Whisper keeps this about the plumbing; the real Whisper-base is tested on its own
    enc_path = save_tiny_audio_model("whisper", tmp_path / "whisper")
    speech = {"encoder": "hf-speech", "encoder_config": {"model": str(enc_path)}}
    if bridge:
        speech["bridge"] = bridge
    model = MultimodalLM.from_config({"llm": "smollm2", "modalities": {"speech": speech}}, llm=smollm2)
    manifest = make_speech_dataset(tmp_path / "data", n=2, seed=0)
    examples = [{**json.loads(line), "base_dir": manifest.parent} for line in manifest.read_text().splitlines()]
    batch = model.collator()(examples)
    model.train()
    out = model(batch)
    loss = out.loss
    if bridge is None:
        assert type(model.bridges["speech"]).__name__ == "CFormerBridge" and "cif_alpha_sum" in out.aux["speech"]
        from xmm.training.objectives import cif_quantity_loss

        quantity = cif_quantity_loss(model, batch, out)
        assert quantity is not None and quantity > 0
        loss = loss + quantity
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.bridges["speech"].parameters())
