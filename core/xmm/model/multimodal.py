"""``MultimodalLM``: a frozen Hugging Face causal LLM plus, per modality, an encoder and a trainable bridge.

This module models: media -> bridge embeddings -> spliced LLM input -> loss or generation. Building lives in
:mod:`xmm.model.build`, checkpoints in :mod:`xmm.model.checkpoint`, LoRA in :mod:`xmm.model.lora`, new-token rows in
:mod:`xmm.model.tokens`, generation in :mod:`xmm.model.generation`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from xmm.encoder import Encoder, EncoderOutput
from xmm.errors import ConfigError, ContextLengthError, ShapeError
from xmm.llm import LLMInfo, LoadedLLM, as_loaded_llm
from xmm.modality import ModalitySpec, legacy_query_tokens
from xmm.model import lora, media, numerics, tokens
from xmm.model.collator import MultimodalBatch, MultimodalCollator
from xmm.model.config import LoraSettings, MultimodalConfig
from xmm.model.messages import MediaItem
from xmm.model.splice import IGNORE_INDEX, SplicedInputs, splice

FeatureProvider = Callable[[list[MediaItem]], list[EncoderOutput]]


@dataclass
class MultimodalOutput:
    """What :meth:`MultimodalLM.forward` returns.

    ``loss``: mean cross-entropy over answer tokens (None without labels). ``logits``: ``[B, L', V]`` for
    ``logits="all"``, ``[B, K, V]`` at ``logits_positions`` for ``"labels"``, None for ``"none"``. ``aux``: bridge
    aux tensors per modality; ``media_groups[m]`` lists which batch media items (by index) the rows of ``aux[m]``
    belong to. ``hidden_states``: the LLM's per-layer hidden states ``[B, L', D]`` when asked.
    """

    loss: torch.Tensor | None
    logits: torch.Tensor | None
    aux: dict[str, dict[str, torch.Tensor]]
    inputs: SplicedInputs
    media_groups: dict[str, list[int]] = field(default_factory=dict)
    hidden_states: tuple[torch.Tensor, ...] | None = None
    logits_positions: torch.Tensor | None = None

    @property
    def labels(self) -> torch.Tensor | None:
        return self.inputs.labels

    @property
    def attention_mask(self) -> torch.Tensor:
        return self.inputs.attention_mask

    @property
    def last_hidden_state(self) -> torch.Tensor | None:
        return self.hidden_states[-1] if self.hidden_states is not None else None


class MultimodalLM(nn.Module):
    """A frozen causal LLM with modality encoders and bridges.

    Attributes: ``llm`` (frozen HF model), ``tokenizer``, ``encoders`` / ``bridges`` (``nn.ModuleDict`` by
    modality; a shared bridge is the same module under several keys), ``specs`` (``ModalitySpec`` by modality),
    ``llm_info`` (id, revision, path), ``config`` (:class:`MultimodalConfig`), ``projectors`` / ``decoders``
    (output side, may be empty), ``feature_provider`` (None, or a callable replacing :meth:`encode_media`).
    Build with :meth:`from_config` or :meth:`from_pretrained`.
    """

    def __init__(
        self, llm: nn.Module, tokenizer: Any, llm_info: Mapping[str, Any], config: MultimodalConfig,
        specs: Mapping[str, ModalitySpec], encoders: Mapping[str, Encoder], bridges: Mapping[str, nn.Module], *,
        bridge_names: Mapping[str, str] | None = None, plugins: Mapping[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self.llm = llm
        self.tokenizer = tokenizer
        self.llm_info = dict(llm_info)
        self.config = config
        self.specs: dict[str, ModalitySpec] = dict(specs)
        self.encoders = nn.ModuleDict(dict(encoders))
        self.bridges = nn.ModuleDict(dict(bridges))
        # modality -> name of its bridge folder in checkpoints (the modality, or the shared bridge's name)
        self.bridge_names: dict[str, str] = dict(bridge_names or {m: m for m in bridges})
        # modality -> {"modality": plugin info, "encoder": plugin info, "encoder_name": registry name, ...}
        self.plugin_info: dict[str, dict[str, Any]] = dict(plugins or {})
        self.projectors = nn.ModuleDict()
        self.decoders = nn.ModuleDict()
        self.decoder_specs: dict[str, dict[str, Any]] = {}
        self.feature_provider: FeatureProvider | None = None
        self.lora_settings: LoraSettings | None = None
        emb = llm.get_input_embeddings()
        self.hidden_size = int(emb.weight.shape[1])
        self.base_vocab_size = int(emb.weight.shape[0])
        tied = bool(getattr(llm.config, "tie_word_embeddings", False))
        self.new_tokens = tokens.NewTokens(self.hidden_size, tied=tied).to(emb.weight.device)
        self.llm.requires_grad_(False)
        self.llm.eval()

    # -- entry points (building and checkpoints live in their own modules) ---------------------------------------
    @classmethod
    def from_config(cls, config: MultimodalConfig | dict[str, Any] | str | os.PathLike[str], *,
                    llm: LoadedLLM | str | os.PathLike[str] | None = None, registry: Any = None,
                    decoders: Mapping[str, Any] | None = None) -> MultimodalLM:
        """Build a model with fresh (untrained) bridges.

        ``config``: a :class:`MultimodalConfig`, a dict or a YAML path. ``llm``: a preloaded :class:`LoadedLLM` from
        :func:`xmm.llm.load_llm` (modified in place: new tokens are added) or a name/path to load instead of
        ``config.llm``. ``decoders``: ready decoder objects for ``config.outputs`` by modality (e.g. a
        ``DiffusersDecoder`` around a pipeline already in memory) instead of building them from the registry.
        """
        from xmm.model.build import build_model

        if isinstance(llm, tuple):
            llm = as_loaded_llm(llm, stacklevel=2)
        return build_model(cls, config, llm=llm, registry=registry, decoders=decoders)

    @classmethod
    def from_pretrained(cls, path_or_repo: str | os.PathLike[str], *, llm: LoadedLLM | None = None,
                        revision: str | None = None, registry: Any = None,
                        decoders: Mapping[str, Any] | None = None) -> MultimodalLM:
        """Load a checkpoint written by :meth:`save_pretrained`: a folder, or a Hub repo id (fetched unless offline).

        ``llm``: an optional preloaded :class:`LoadedLLM`; its embedding fingerprint must match the manifest's,
        else :class:`~xmm.errors.IncompatibleCheckpointError` says what was expected. ``decoders``: ready decoder
        objects for the checkpoint's outputs (decoders are never saved; by default they are rebuilt from the
        config's ``outputs``).
        """
        from xmm.model.checkpoint import load_checkpoint

        if isinstance(llm, tuple):
            llm = as_loaded_llm(llm, stacklevel=2)
        return load_checkpoint(cls, path_or_repo, llm=llm, revision=revision, registry=registry, decoders=decoders)

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write only what is trainable (bridges, new-token rows, LoRA, projectors, trainable encoders) and
        the ``xmm.json`` manifest; the directory is replaced atomically."""
        from xmm.model.checkpoint import save_checkpoint

        return save_checkpoint(self, directory)

    @property
    def loaded_llm(self) -> LoadedLLM:
        """The LLM, its tokenizer and identity, e.g. to build another model on the same weights (which takes it
        over: this model must not be used afterwards)."""
        return LoadedLLM(self.llm, self.tokenizer, LLMInfo.from_mapping(self.llm_info))

    # -- tokens and LoRA ------------------------------------------------------------------------------------
    def add_tokens(self, texts: Sequence[str], trainable: bool) -> list[int]:
        """Add special tokens to the tokenizer with their rows in :attr:`new_tokens`; returns their ids (see
        :func:`xmm.model.tokens.add_tokens`)."""
        return tokens.add_tokens(self.llm, self.tokenizer, self.new_tokens, texts, trainable=trainable,
                                 base_vocab_size=self.base_vocab_size)

    def add_lora(self, settings: LoraSettings | dict[str, Any] | Any) -> None:
        """Inject LoRA adapters (peft) into the LLM in place; only the adapters are trainable and saved."""
        if self.lora_settings is not None:
            raise ConfigError("LoRA is already added to this model", field="lora")
        settings = lora.lora_settings(settings)
        lora.inject_lora(self.llm, settings, base_model_id=self.llm_info.get("id"))
        # peft marks everything but the adapters as frozen, which would also freeze our new-token rows
        self.new_tokens.trainable_in.requires_grad_(True)
        self.new_tokens.trainable_out.requires_grad_(True)
        self.lora_settings = settings
        self.config = self.config.model_copy(update={"lora": settings})
        self.train(self.training)  # new adapter modules start in train mode (dropout on); follow the model's mode

    def lora_parameters(self) -> dict[str, nn.Parameter]:
        return lora.lora_parameters(self.llm)

    def peft_config(self) -> Any:
        """The ``peft.LoraConfig`` of the injected adapter."""
        return lora.peft_config(self.llm)

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        return lora.lora_state_dict(self.llm)

    def load_lora_state_dict(self, state: dict[str, torch.Tensor], *, source: str = "LoRA weights") -> None:
        lora.load_lora_state_dict(self.llm, state, source=source)

    # -- components and modes -------------------------------------------------------------------------------
    def named_components(self) -> dict[str, nn.Module | list[nn.Parameter]]:
        """What a training stage can make trainable: ``bridge:<m>``, ``encoder:<m>``, ``llm:lora``,
        ``llm:embeddings:new``, ``projector:<name>``. The LLM's base weights are never listed."""
        out: dict[str, nn.Module | list[nn.Parameter]] = {f"bridge:{m}": b for m, b in self.bridges.items()}
        out.update({f"encoder:{m}": e for m, e in self.encoders.items()})
        adapters = list(self.lora_parameters().values())
        if adapters:
            out["llm:lora"] = adapters
        if self.new_tokens.trainable_tokens:
            rows = [self.new_tokens.trainable_in]
            if not self.new_tokens.tied:
                rows.append(self.new_tokens.trainable_out)
            out["llm:embeddings:new"] = rows
        out.update({f"projector:{name}": p for name, p in self.projectors.items()})
        return out

    def train(self, mode: bool = True) -> MultimodalLM:
        super().train(mode)
        # the frozen LLM stays in eval mode (no dropout) unless LoRA adapters are being trained
        self.llm.train(mode and self.lora_settings is not None)
        for d in self.decoders.values():
            d.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    @property
    def max_length(self) -> int:
        """Context limit for prompt + media (+ generated) tokens."""
        if self.config.max_length is not None:
            return self.config.max_length
        return int(getattr(self.llm.config, "max_position_embeddings", None) or 2048)

    @property
    def placeholder_ids(self) -> dict[int, str]:
        return {int(self.tokenizer.convert_tokens_to_ids(s.placeholder)): m for m, s in self.specs.items()}

    def num_media_tokens(self, item: MediaItem) -> int:
        """LLM positions ``item`` takes, as its encoder and bridge say; when that depends on the input (CIF), a lower
        bound (1, its placeholder) for checks before the forward pass, which knows the exact number."""
        m = item.modality
        count = media.media_token_count(self.encoders[m], self.bridges[m], m) if m in self.bridges else None
        if count is None:
            count = legacy_query_tokens(item.spec)
        return int(count) if count else 1

    def collator(self, **kwargs: Any) -> MultimodalCollator:
        """A :class:`MultimodalCollator` bound to this model's tokenizer, modalities and context length."""
        return MultimodalCollator(self, **kwargs)

    def autocast_enabled(self) -> bool:
        return numerics.autocast_enabled(self.config.autocast, self.device)

    def autocast(self) -> AbstractContextManager[Any]:
        """bf16 autocast on the model's device when :attr:`config.autocast` allows it."""
        return numerics.autocast(self.config.autocast, self.device)

    # -- media ----------------------------------------------------------------------------------------------
    def encode_media(self, items: Sequence[MediaItem]) -> list[EncoderOutput]:
        """One ``EncoderOutput`` ``[1, T, D]`` per item (see :func:`xmm.model.media.encode_items`)."""
        return media.encode_items(self.encoders, items)

    def media_features(self, items: list[MediaItem]) -> list[EncoderOutput]:
        """Features of ``items`` from :attr:`feature_provider` (e.g. a feature cache) or :meth:`encode_media`."""
        feats = self.feature_provider(items) if self.feature_provider is not None else self.encode_media(items)
        if len(feats) != len(items):
            raise ShapeError(f"the feature provider returned {len(feats)} outputs for {len(items)} media items")
        return feats

    def bridge_media(
        self, items: Sequence[MediaItem], features: Sequence[EncoderOutput],
        contexts: Sequence[torch.Tensor | None] | media.TurnContexts | None = None,
    ) -> tuple[list[torch.Tensor], dict[str, dict[str, torch.Tensor]], dict[str, list[int]]]:
        """``([Q_i, d_llm] per item, aux per modality, groups)`` (see :func:`xmm.model.media.bridge_items`)."""
        return media.bridge_items(self.bridges, items, features, contexts, self.device)

    def embed(self, batch: MultimodalBatch) -> tuple[SplicedInputs, dict[str, dict[str, torch.Tensor]], dict[str, list[int]]]:
        """Token embeddings with every placeholder replaced by its item's bridge embeddings."""
        batch = batch.to(self.device)
        token_embeds = self.llm.get_input_embeddings()(batch.input_ids)
        media_embeds: list[torch.Tensor] = []
        aux: dict[str, dict[str, torch.Tensor]] = {}
        groups: dict[str, list[int]] = {}
        if batch.media:
            feats = self.media_features(list(batch.media))
            contexts = None
            if any(getattr(self.bridges[it.modality], "uses_context", False) for it in batch.media if it.modality in self.bridges):
                contexts = media.turn_contexts(token_embeds, batch.media)
            media_embeds, aux, groups = self.bridge_media(batch.media, feats, contexts)
        spliced = splice(token_embeds, batch.input_ids, batch.attention_mask, media_embeds, list(self.placeholder_ids),
                         labels=batch.labels, padding_side=batch.padding_side,
                         pad_to_multiple_of=getattr(self, "pad_to_multiple_of", None))
        return spliced, aux, groups

    # -- forward --------------------------------------------------------------------------------------------
    def forward(self, batch: MultimodalBatch, *, output_hidden_states: bool = False,
                logits: Literal["all", "labels", "none"] = "all") -> MultimodalOutput:
        """LM forward on a collated batch; the loss covers answer tokens only.

        ``logits="labels"`` computes the LM head only where a label follows (much cheaper in training);
        gradients flow through the frozen LLM into bridges, new-token rows and LoRA.
        """
        with self.autocast():
            spliced, aux, groups = self.embed(batch)
            if spliced.inputs_embeds.shape[1] > self.max_length:
                raise ContextLengthError(f"the batch is {spliced.inputs_embeds.shape[1]} positions long with its media; "
                                         f"the context is {self.max_length}")
            kwargs: dict[str, Any] = {"inputs_embeds": spliced.inputs_embeds, "attention_mask": spliced.attention_mask,
                                      "position_ids": spliced.position_ids, "use_cache": False,
                                      "output_hidden_states": output_hidden_states}
            labels = spliced.labels
            keep: torch.Tensor | None = None
            if logits != "all":
                # positions whose next token is a label, in any row; the LM head runs only there
                if labels is not None:
                    keep = (labels[:, 1:] != IGNORE_INDEX).any(0).nonzero().squeeze(-1)
                else:
                    keep = torch.zeros(0, dtype=torch.long, device=self.device)
                kwargs["logits_to_keep"] = keep
            out = self.llm(**kwargs)
        all_logits = out.logits
        loss = None
        if labels is not None:
            pred, target = (all_logits[:, :-1], labels[:, 1:]) if keep is None else (all_logits, labels[:, keep + 1])
            if bool((target != IGNORE_INDEX).any()):
                loss = nn.functional.cross_entropy(pred.float().reshape(-1, pred.shape[-1]), target.reshape(-1),
                                                   ignore_index=IGNORE_INDEX)
            else:  # nothing to learn in this batch; keep the graph so backward() still works
                loss = all_logits.float().sum() * 0.0 if all_logits.requires_grad else all_logits.new_zeros(())
        return MultimodalOutput(loss=loss, logits=None if logits == "none" else all_logits, aux=aux, inputs=spliced,
                                media_groups=groups, hidden_states=out.hidden_states if output_hidden_states else None,
                                logits_positions=keep)

    # -- generation (see xmm.model.generation) ----------------------------------------------------------------
    def generate(self, messages: Any, **kwargs: Any) -> Any:
        """Answer a conversation (or a batch of them); see :func:`xmm.model.generation.generate`."""
        from xmm.model.generation import generate

        return generate(self, messages, **kwargs)

    def stream(self, messages: Any, **kwargs: Any) -> Any:
        """Iterator of answer text pieces as they are produced; see :func:`xmm.model.generation.stream`."""
        from xmm.model.generation import stream

        return stream(self, messages, **kwargs)

    def chat(self, messages: Any, **kwargs: Any) -> str:
        """The answer text to one conversation (decoders do not run: use :meth:`generate` for images, audio...)."""
        kwargs.setdefault("run_decoders", False)
        return self.generate(messages, **kwargs).text


def __getattr__(name: str) -> Any:
    # helpers that moved to xmm.model.media stay importable from here for one release
    if name in ("turn_text_embeddings", "pad_context"):
        warnings.warn(f"xmm.model.multimodal.{name} moved to xmm.model.media", DeprecationWarning, stacklevel=2)
        return getattr(media, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
