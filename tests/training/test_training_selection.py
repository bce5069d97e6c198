"""Trainable selectors, freezing, eval mode of frozen modules, optimiser groups and the objective registry."""

from __future__ import annotations

import pytest
import torch
from xmm.errors import ConfigError
from xmm.training.optim import build_optimizer, lr_factor, param_groups
from xmm.training.plan import OptimizerConfig, ScheduleConfig
from xmm.training.selection import apply_selection, install_mode_guard, remove_mode_guard, resolve_selector, select


def test_component_glob_and_sub_selectors(tiny_model) -> None:
    bridge = ["bridges.vec.mlp.0.weight", "bridges.vec.mlp.0.bias", "bridges.vec.mlp.2.weight", "bridges.vec.mlp.2.bias"]
    assert resolve_selector(tiny_model, "bridge:vec") == bridge
    assert resolve_selector(tiny_model, "bridge:*") == bridge
    assert resolve_selector(tiny_model, "bridge:*:mlp.2") == bridge[2:]
    assert resolve_selector(tiny_model, "bridges.*.bias") == [bridge[1], bridge[3]]
    assert resolve_selector(tiny_model, "llm.model.layers.1.mlp.*") == [
        "llm.model.layers.1.mlp.gate_proj.weight", "llm.model.layers.1.mlp.up_proj.weight", "llm.model.layers.1.mlp.down_proj.weight"]
    assert resolve_selector(tiny_model, "projector:*?") == []


@pytest.mark.parametrize(("selector", "words"), [
    ("bridge:image", "no component matches; components: bridge:vec, encoder:vec"),
    ("llm:lora", "no component matches"),
    ("bridge:vec:adapter", "no parameter of ['bridge:vec'] matches 'adapter'"),
    ("bridgez.*", "matches no parameter name"),
])
def test_a_selector_that_selects_nothing_is_an_error(tiny_model, selector: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        select(tiny_model, ["bridge:vec", selector], field_prefix="stages.1.trainable")
    assert words in str(e.value) and e.value.field == "stages.1.trainable.1"


def test_freeze_everything_else_and_keep_it_in_eval_mode(tiny_model) -> None:
    tiny_model.add_lora({"r": 2, "alpha": 4, "dropout": 0.1, "target_modules": ["q_proj"]})
    sel = select(tiny_model, ["bridge:vec", "llm:lora"])
    apply_selection(tiny_model, sel)
    trainable = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    assert trainable == set(sel.names) and any("lora_A" in n for n in trainable)
    install_mode_guard(tiny_model)
    tiny_model.train()
    assert tiny_model.bridges["vec"].training
    assert not tiny_model.encoders["vec"].training  # frozen encoder
    layer = tiny_model.llm.model.layers[0]
    assert layer.self_attn.q_proj.training and layer.self_attn.q_proj.lora_dropout["default"].training
    assert not layer.mlp.training and not layer.self_attn.k_proj.training  # frozen base
    assert not tiny_model.llm.model.embed_tokens.training
    tiny_model.eval()
    assert not tiny_model.bridges["vec"].training
    remove_mode_guard(tiny_model)
    assert "train" not in tiny_model.__dict__
    # a stage that trains only the bridge: LoRA goes back to frozen and to eval mode
    apply_selection(tiny_model, select(tiny_model, ["bridge:*"]))
    install_mode_guard(tiny_model)
    tiny_model.train()
    assert not layer.self_attn.q_proj.training and not any(p.requires_grad for p in tiny_model.llm.parameters())


def test_optimizer_sees_only_selected_parameters_with_group_lrs(tiny_model) -> None:
    sel = select(tiny_model, ["bridge:vec"])
    apply_selection(tiny_model, sel)
    cfg = OptimizerConfig(lr=1e-3, weight_decay=0.1, groups=[{"params": ["bridge:vec:mlp.2"], "lr": 5e-2}])
    groups = param_groups(tiny_model, sel, cfg, field_prefix="stages.0.optimizer")
    opt = build_optimizer(groups, cfg)
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert ids == {id(p) for p in sel.params.values()}
    by_lr = {(g["lr"], g["weight_decay"]): len(g["params"]) for g in opt.param_groups}
    assert by_lr == {(1e-3, 0.1): 1, (1e-3, 0.0): 1, (5e-2, 0.1): 1, (5e-2, 0.0): 1}
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"]  # one pass per parameter on CPU/CUDA
    with pytest.raises(ConfigError, match="does not train") as e:
        param_groups(tiny_model, sel, OptimizerConfig(groups=[{"params": ["encoder:vec"], "lr": 1.0}]),
                     field_prefix="stages.0.optimizer")
    assert e.value.field == "stages.0.optimizer.groups.0.params.0"


def test_schedules() -> None:
    cos = ScheduleConfig(type="cosine", warmup_steps=2, min_lr_ratio=0.1)
    assert [round(lr_factor(s, 10, cos), 4) for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert lr_factor(10, 10, cos) == pytest.approx(0.1)
    lin = ScheduleConfig(type="linear")
    assert lr_factor(5, 10, lin) == pytest.approx(0.5)
    assert lr_factor(7, 10, ScheduleConfig()) == 1.0


def test_guided_answer_weighs_each_answer_the_same() -> None:
    """A 1-token answer counts as much as an 8-token one, whatever their lengths; rows with no answer are left out."""
    from xmm.training.objectives import per_answer_cross_entropy

    torch.manual_seed(0)
    logits, target = torch.randn(3, 8, 11), torch.randint(0, 11, (3, 8))
    valid = torch.zeros(3, 8, dtype=torch.bool)
    valid[0, :1] = True
    valid[1, :] = True  # row 2: no answer tokens
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none").view(3, 8)
    want = (ce[0, 0] + ce[1].mean()) / 2
    torch.testing.assert_close(per_answer_cross_entropy(logits, target, valid), want)
    assert not torch.isclose(want, ce[valid].mean())  # the plain token mean would weigh row 1 eight times


def test_layer_checkpointing_of_a_frozen_llm_gives_the_same_gradients(tiny_model, device) -> None:
    from xmm.training.selection import disable_layer_checkpointing, enable_layer_checkpointing

    apply_selection(tiny_model, select(tiny_model, ["bridge:vec"]))
    embeds = torch.randn(2, 5, 32, device=device, requires_grad=True)

    def grad() -> torch.Tensor:
        embeds.grad = None
        tiny_model.llm(inputs_embeds=embeds, use_cache=False).logits.square().mean().backward()
        return embeds.grad.clone()

    plain = grad()
    assert enable_layer_checkpointing(tiny_model.llm) == 2  # both decoder layers, although frozen and in eval mode
    assert not tiny_model.llm.training
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        tiny_model.llm(inputs_embeds=embeds, use_cache=False).logits.sum()
    checkpointed = grad()
    assert torch.allclose(plain, checkpointed, atol=1e-6)
    disable_layer_checkpointing(tiny_model.llm)
    saved_plain = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved_plain.append(t.numel()) or t, lambda t: t):
        tiny_model.llm(inputs_embeds=embeds, use_cache=False).logits.sum()
    assert sum(saved) < sum(saved_plain)  # the layers' activations are recomputed, not stored
