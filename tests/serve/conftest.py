"""Fixtures for the server's tests: a tiny multimodal model (xmm.testing's tiny LLM + the tiny modalities of
``xmm_serve_test_plugin``) and a real uvicorn server on a free loopback port, with an API key. Helpers live in
``xmm_serve_testkit``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from xmm_serve_testkit import KEY, build_model, png_bytes


@pytest.fixture(scope="module")
def serve_model(tiny_llm_dir: Path) -> Any:
    return build_model(tiny_llm_dir)


@pytest.fixture(scope="module")
def allowed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("allowed")
    (d / "red.png").write_bytes(png_bytes((255, 0, 0)))
    return d


@pytest.fixture(scope="module")
def server(serve_model: Any, allowed_dir: Path) -> Iterator[Any]:
    """A running server (``.url``) with API key :data:`KEY` and ``--allow-files`` = ``allowed_dir``."""
    from xmm.serve import BackgroundServer, ServeConfig, create_app

    config = ServeConfig(port=0, api_key=KEY, allow_files=allowed_dir, max_tokens_limit=64, default_max_tokens=12,
                         max_body_bytes=1 << 20, max_prompt_chars=20_000, batch_wait_ms=50, ui=True)
    with BackgroundServer(create_app(serve_model, config, name="tiny"), config) as srv:
        yield srv


@pytest.fixture
def client(server: Any) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
