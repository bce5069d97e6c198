"""``xmm.model``: the multimodal LLM, its config, the chat collator and checkpoints.

``MultimodalLM`` = frozen Hugging Face causal LLM + per-modality encoder and bridge; media parts of Hugging Face chat
messages are spliced into the LLM input where their placeholder tokens are.
"""

from __future__ import annotations

from xmm.model.checkpoint import embedding_fingerprint, read_manifest
from xmm.model.collator import MultimodalBatch, MultimodalCollator
from xmm.model.config import LoraSettings, ModalityConfig, MultimodalConfig
from xmm.model.generation import GenerationResult, TextStream
from xmm.model.messages import MediaItem, ParsedConversation, parse_conversation
from xmm.model.multimodal import MultimodalLM, MultimodalOutput
from xmm.model.splice import IGNORE_INDEX, SplicedInputs, splice

__all__ = [
    "IGNORE_INDEX",
    "GenerationResult",
    "LoraSettings",
    "MediaItem",
    "ModalityConfig",
    "MultimodalBatch",
    "MultimodalCollator",
    "MultimodalConfig",
    "MultimodalLM",
    "MultimodalOutput",
    "ParsedConversation",
    "SplicedInputs",
    "TextStream",
    "embedding_fingerprint",
    "parse_conversation",
    "read_manifest",
    "splice",
]
