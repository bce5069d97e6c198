"""The speech plugin's recipes: X-LLM's CIF stages (default) and the Ultravox-style stack bridge."""

from __future__ import annotations

import torch
from xmm.registry import get_registry
from xmm.training.plan import load_plan


def test_both_recipes_come_through_the_plugin_and_plan_valid_stages(tmp_path) -> None:
    reg = get_registry()
    cif, stack = reg.recipe("speech"), reg.recipe("speech-stack")
    assert [s.name for s in cif.stages] == ["convert", "align", "integrate"]
    assert list(cif.stage("convert").objectives) == ["cif_tokens"]  # no LLM layer runs in it
    assert reg.objective("cif_tokens").needs_output is False
    assert cif.bridge["type"] == "cformer" and stack.bridge == {"type": "stack-mlp", "stack": 8}
    assert reg.demo_task("speech-espeak").recipe == "speech"
    for recipe in (cif, stack):
        plan = {"model": {"llm": "smollm2", "modalities": {"speech": recipe.modality_config()}},
                "stages": recipe.plan_stages({"train": ["train.jsonl"]}, joint=False)}
        assert [s.name for s in load_plan(plan, base_dir=tmp_path).stages] == [s.name for s in recipe.own_stages]


def test_the_stack_bridge_turns_whisper_frames_into_6_tokens_a_second() -> None:
    bridge = get_registry().create_bridge({"type": "stack-mlp", "stack": 8, "input_dim": 512, "output_dim": 576})
    frames = torch.randn(2, 100, 512)  # 2 s at Whisper's 50 frames per second
    mask = torch.ones(2, 100, dtype=torch.bool)
    mask[1, 60:] = False
    out = bridge(frames, mask)
    assert out.embeds.shape == (2, 13, 576) and out.mask.sum(1).tolist() == [13, 8]
