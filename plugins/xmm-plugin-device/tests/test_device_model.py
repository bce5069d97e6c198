"""The device modality inside MultimodalLM and the staged trainer, with a tiny random LLM."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from xmm_plugin_device.synthetic import generate

PLAN = Path(__file__).resolve().parents[1] / "configs" / "xllm-device.yaml"
SMALL_ENCODER = {"d_model": 16, "num_heads": 2, "num_layers": 1}


def _examples(manifest: Path, n: int) -> list[dict]:
    rows = [json.loads(line) for line in manifest.read_text().splitlines()[:n]]
    return [{"messages": r["messages"], "base_dir": manifest.parent} for r in rows]


def test_forward_backward_and_checkpoint(tmp_path, tiny_llm_dir):
    from xmm.model import MultimodalCollator, MultimodalLM

    report = generate(tmp_path / "data", n=6, seed=0, split="train")
    torch.manual_seed(0)
    model = MultimodalLM.from_config({"llm": str(tiny_llm_dir), "autocast": "off",
                                      "modalities": {"device": {"encoder_config": SMALL_ENCODER}}})
    enc, bridge = model.encoders["device"], model.bridges["device"]
    assert enc.trainable and not enc.frozen and type(bridge).bridge_type == "guided-mlp"
    batch = MultimodalCollator(model)(_examples(report.manifest, 4))
    model.train()
    out = model(batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert enc.feature_weight.grad.abs().sum() > 0 and any(p.grad is not None for p in bridge.parameters())

    model.eval()
    with torch.no_grad():
        before = model(batch).logits
    model.save_pretrained(tmp_path / "ckpt")
    manifest = json.loads((tmp_path / "ckpt" / "xmm.json").read_text())
    assert manifest["modalities"]["device"]["encoder"]["path"] == "encoders/device"
    back = MultimodalLM.from_pretrained(tmp_path / "ckpt").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(batch).logits, before)


def test_xllm_plan_trains_the_encoder_then_freezes_it(tmp_path, tiny_llm_dir):
    """The shipped plan, shrunk: convert (guided_answer, no LLM) changes encoder and bridge, align only the bridge;
    eval scores the test."""
    from xmm.training.evaluate import evaluate
    from xmm.training.loop import train
    from xmm.training.plan import load_plan

    data = tmp_path / "data"
    generate(data, n=16, seed=1, split="train")
    test = generate(data, n=6, seed=2, split="test", captions=False)
    plan = yaml.safe_load(PLAN.read_text())
    plan["model"] = {"llm": str(tiny_llm_dir), "autocast": "off",
                     "modalities": {"device": {"encoder_config": SMALL_ENCODER}}}
    plan["output_dir"] = str(tmp_path / "run")
    plan["stages"]["convert"].update(data={"train": [str(data / "train.jsonl")]}, max_steps=2, batch_size=4)
    plan["stages"]["align"].update(data={"train": [str(data / "train.jsonl")]}, max_steps=2, batch_size=4)
    loaded = load_plan(plan, base_dir=PLAN.parent)
    from xmm.training.loop import build_model

    initial = {k: v.cpu().clone() for k, v in build_model(loaded).encoders["device"].state_dict().items()}
    result = train(loaded)
    assert [s["stage"] for s in result.stages] == ["convert", "align"]

    from safetensors.torch import load_file

    ckpts = tmp_path / "run" / "checkpoints"
    enc1 = load_file(ckpts / "stage-1-convert" / "model" / "encoders" / "device" / "model.safetensors")
    enc2 = load_file(ckpts / "stage-2-align" / "model" / "encoders" / "device" / "model.safetensors")
    assert all(torch.equal(enc1[k], enc2[k]) for k in enc1)  # frozen in stage 2
    br1 = load_file(next((ckpts / "stage-1-convert" / "model" / "bridges").rglob("*.safetensors")))
    br2 = load_file(next((ckpts / "stage-2-align" / "model" / "bridges").rglob("*.safetensors")))
    assert any(not torch.equal(br1[k], br2[k]) for k in br1)  # trained in stage 2

    assert any(not torch.equal(initial[k], enc1[k]) for k in enc1)  # trained in stage 1

    from xmm.model import MultimodalLM

    model = MultimodalLM.from_pretrained(result.model_dir)
    assert all(torch.equal(v.cpu(), enc2[k]) for k, v in model.encoders["device"].state_dict().items())
    scored = evaluate(model, test.manifest, "exact", max_new_tokens=4, batch_size=3)
    assert scored["n"] == 6 and 0.0 <= scored["score"] <= 1.0
