"""Fixtures of the output-side tests: xmm.testing's tiny random LLM over SmolLM2's real tokenizer, tiny diffusers
pipelines."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _tiny_models(one_thread: None) -> None:
    """Every test here runs with xmm.testing's ``one_thread``: the models are tiny."""


@pytest.fixture(scope="session")
def tiny_llm_dir(make_tiny_llm, smollm2_dir):
    """xmm.testing's tiny LLM with SmolLM2's tokenizer, 64 wide (the projector and signal-row sizes the tests check
    follow from that width); xmm.testing's ``tiny_llm`` loads it fresh for each test."""
    return make_tiny_llm(smollm2_dir, hidden_size=64)


@pytest.fixture
def tiny_projector() -> dict:
    """A small transformer output projector config (a fresh dict per test)."""
    return {"type": "transformer", "hidden_dim": 32, "num_heads": 2, "num_encoder_layers": 1, "num_decoder_layers": 1}


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
def image_model(tiny_llm, image_decoder, tiny_projector):
    """A text-only MultimodalLM with an ``image`` output through the tiny Stable Diffusion pipeline."""
    from xmm.model.multimodal import MultimodalLM

    cfg = {"modalities": {}, "autocast": "off", "device": "cpu",
           "outputs": {"image": {"decoder": "diffusers", "projector": tiny_projector}}}
    return MultimodalLM.from_config(cfg, llm=tiny_llm, decoders={"image": image_decoder})
