"""xmm: give any Hugging Face causal LLM new senses with pluggable modalities and small trainable bridges."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xmm._version import __version__
from xmm.hookspecs import hookimpl
from xmm.threads import set_passive_wait

# before torch loads OpenMP (xmm is imported first whenever the `xmm` command runs): waiting threads do not spin
set_passive_wait()

__all__ = ["MultimodalLM", "__version__", "get_registry", "hookimpl"]

if TYPE_CHECKING:
    from xmm.model import MultimodalLM
    from xmm.registry import get_registry


def __getattr__(name: str) -> Any:
    # heavy modules (transformers) load only when asked for, so `import xmm` and `xmm plugins` stay fast
    if name == "MultimodalLM":
        from xmm.model import MultimodalLM

        return MultimodalLM
    if name == "get_registry":
        from xmm.registry import get_registry

        return get_registry
    raise AttributeError(f"module 'xmm' has no attribute {name!r}")
