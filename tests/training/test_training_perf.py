"""Training-time performance helpers: the CPU attention switched per stage, the glibc allocator tuning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from xmm.testing import build_tiny_llm
from xmm.training import attention
from xmm.training.attention import NAME, attention_forward, use_training_attention


def _tiny_llama(impl: str = "sdpa"):
    return build_tiny_llm(vocab_size=64, attn_implementation=impl)


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (3, 10), generator=g)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 7:] = 0  # right padding
    mask[2, :3] = 0  # left padding: fully masked query rows
    return ids, mask


def _loss_and_grads(llm, dtype_autocast: bool):
    ids, mask = _batch()
    embeds = llm.get_input_embeddings()(ids).detach().requires_grad_(True)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if dtype_autocast else torch.autocast("cpu", enabled=False)
    with ctx:
        out = llm(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits
    keep = mask.bool()
    loss = F.cross_entropy(out.float()[keep], ids[keep])
    loss.backward()
    return loss.detach(), embeds.grad


def test_switch_and_restore_only_touch_sdpa_models():
    llm = _tiny_llama()
    restore = use_training_attention(llm)
    assert llm.config._attn_implementation == NAME
    assert llm.model.layers[0].self_attn.config._attn_implementation == NAME
    restore()
    assert llm.config._attn_implementation == "sdpa"
    eager = _tiny_llama("eager")
    use_training_attention(eager)()
    assert eager.config._attn_implementation == "eager"


def test_bf16_training_matches_sdpa_and_fp32_is_untouched(monkeypatch):
    llm = _tiny_llama()
    calls = []
    real = attention._math_applies
    monkeypatch.setattr(attention, "_math_applies", lambda *a: calls.append(real(*a)) or calls[-1])
    ref32 = _loss_and_grads(llm, False)
    ref16 = _loss_and_grads(llm, True)
    restore = use_training_attention(llm)
    got32 = _loss_and_grads(llm, False)
    assert calls and not any(calls)  # fp32: transformers' own sdpa, bit for bit
    assert torch.equal(got32[0], ref32[0]) and torch.equal(got32[1], ref32[1])
    calls.clear()
    got16 = _loss_and_grads(llm, True)
    assert calls and all(calls)  # bf16 with gradients: the math form
    restore()
    assert torch.isfinite(got16[1]).all()  # fully masked (left-padding) rows stay finite
    # the math form is at least as close to fp32 as the bf16 flash kernel
    err = lambda g: ((g - ref32[1]).norm() / ref32[1].norm()).item()  # noqa: E731
    assert err(got16[1]) <= max(2 * err(ref16[1]), 1e-2)
    torch.testing.assert_close(got16[0], ref16[0], rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("causal_mask", [False, True])
def test_math_form_equals_reference_attention(causal_mask):
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 4, 5, 8, generator=g).to(torch.bfloat16) for _ in range(3))
    mod = torch.nn.Module()
    mod.num_key_value_groups, mod.is_causal = 1, True
    mask = torch.ones(5, 5, dtype=torch.bool).tril()[None, None].expand(2, 1, 5, 5) if causal_mask else None
    with torch.enable_grad():
        out, _ = attention_forward(mod, q, k, v, mask, scaling=8**-0.5)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True).transpose(1, 2)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    # without gradients (inference) the call goes to sdpa
    with torch.no_grad():
        out2, _ = attention_forward(mod, q, k, v, mask, scaling=8**-0.5)
    torch.testing.assert_close(out2.float(), ref, rtol=2e-2, atol=2e-2)


def test_cpu_allocator_tuning_is_once_per_process_and_can_be_turned_off(monkeypatch):
    import platform

    from xmm.training import memory

    monkeypatch.setattr(memory, "_tuned", None)
    monkeypatch.setenv("XMM_MALLOC_TUNING", "0")
    assert memory.tune_cpu_allocator() is False
    monkeypatch.setattr(memory, "_tuned", None)
    monkeypatch.delenv("XMM_MALLOC_TUNING")
    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert memory.tune_cpu_allocator() is expected
    assert memory.tune_cpu_allocator() is expected  # memoised
