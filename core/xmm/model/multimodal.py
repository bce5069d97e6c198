"""``MultimodalLM``: a frozen Hugging Face causal LLM plus, per modality, an encoder and a trainable bridge."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from xmm.encoder import Encoder, EncoderOutput
from xmm.errors import ConfigError, ContextLengthError, RegistryError, ShapeError
from xmm.modality import ModalitySpec
from xmm.model.collator import IGNORE_INDEX, MultimodalBatch, MultimodalCollator
from xmm.model.config import LoraSettings, MultimodalConfig
from xmm.model.messages import MediaItem
from xmm.model.splice import SplicedInputs, splice
from xmm.model.tokens import ExtendedEmbedding, ExtendedLMHead, NewTokens, TokenInfo

log = logging.getLogger(__name__)

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


def _cpu_supports_bf16() -> bool:
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, c, lambda: False)()) for c in checks)


def _resolve_device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class MultimodalLM(nn.Module):
    """A frozen causal LLM with modality encoders and bridges.

    Attributes: ``llm`` (frozen HF model), ``tokenizer``, ``encoders`` / ``bridges`` (``nn.ModuleDict`` by
    modality; a shared bridge is the same module under several keys), ``specs`` (``ModalitySpec`` by modality),
    ``llm_info`` (id, revision, path), ``config`` (:class:`MultimodalConfig`), ``projectors`` / ``decoders``
    (output side, may be empty), ``feature_provider`` (None, or a callable replacing :meth:`encode_media`).
    Build with :meth:`from_config` or :meth:`from_pretrained`.
    """

    def __init__(
        self,
        llm: nn.Module,
        tokenizer: Any,
        llm_info: dict[str, Any],
        config: MultimodalConfig,
        specs: Mapping[str, ModalitySpec],
        encoders: Mapping[str, Encoder],
        bridges: Mapping[str, nn.Module],
        *,
        bridge_names: Mapping[str, str] | None = None,
        plugins: Mapping[str, dict[str, Any]] | None = None,
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
        # modality -> {"modality": plugin info, "encoder": plugin info, "encoder_name": registry name}
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
        self.new_tokens = NewTokens(self.hidden_size, tied=tied).to(emb.weight.device)
        self._wrapped = False
        self.llm.requires_grad_(False)
        self.llm.eval()

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_config(
        cls,
        config: MultimodalConfig | dict[str, Any] | str | os.PathLike[str],
        *,
        llm: Any = None,
        registry: Any = None,
        decoders: Mapping[str, Any] | None = None,
    ) -> MultimodalLM:
        """Build a model with fresh (untrained) bridges.

        ``config``: a :class:`MultimodalConfig`, a dict or a YAML path. ``llm``: optional preloaded
        ``(model, tokenizer, info)`` from :func:`xmm.llm.load_llm` (it is modified in place: new tokens are added)
        or a name/path to load instead of ``config.llm``. ``decoders``: ready decoder objects for ``config.outputs``
        by modality (e.g. a ``DiffusersDecoder`` around a pipeline already in memory) instead of building them from
        the registry.
        """
        from xmm.llm import load_llm
        from xmm.registry import get_registry

        cfg = MultimodalConfig.load(config)
        reg = registry or get_registry()
        device = _resolve_device(cfg.device)
        specs: dict[str, ModalitySpec] = {}
        encoders: dict[str, Encoder] = {}
        plugins: dict[str, dict[str, Any]] = {}
        # resolve every plugin part before loading the LLM, so a missing plugin fails fast
        for name, mc in cfg.modalities.items():
            try:
                spec = reg.modality(name)
            except RegistryError as e:
                raise ConfigError(str(e), field=f"modalities.{name}") from e
            enc_name = mc.encoder or spec.default_encoder
            enc_cfg = {**dict(spec.default_encoder_config), **mc.encoder_config} if mc.encoder is None else dict(mc.encoder_config)
            try:
                enc = reg.create_encoder(enc_name, **enc_cfg)
            except RegistryError as e:
                raise ConfigError(str(e), field=f"modalities.{name}.encoder") from e
            except TypeError as e:  # an option the encoder factory does not take
                raise ConfigError(f"encoder '{enc_name}': {e}", field=f"modalities.{name}.encoder_config") from e
            if not enc.trainable:
                enc.freeze()  # frozen encoders never get gradients, whatever the plugin left on
            specs[name], encoders[name] = spec, enc.to(device)
            plugins[name] = {
                "modality": _plugin_of(reg, "modalities", name),
                "encoder": _plugin_of(reg, "encoders", enc_name),
                "encoder_name": enc_name,
                "encoder_config": enc_cfg,
            }
        if llm is None or isinstance(llm, (str, os.PathLike)):
            if llm is not None:
                cfg = cfg.model_copy(update={"llm": str(llm)})  # the manifest must name the LLM really used
            dtype = getattr(torch, cfg.dtype)
            model, tok, info = load_llm(str(llm) if llm is not None else cfg.llm, dtype=dtype, device=str(device))
        else:
            model, tok, info = llm
            _adopt_llm(model)
            model.to(device)
        hidden = int(model.get_input_embeddings().weight.shape[1])
        bridges, bridge_names = _build_bridges(cfg, specs, encoders, hidden, reg, vocab=int(model.config.vocab_size))
        self = cls(model, tok, info, cfg, specs, encoders, {m: b.to(device) for m, b in bridges.items()},
                   bridge_names=bridge_names, plugins=plugins)
        placeholders = [s.placeholder for s in specs.values()]
        if placeholders:
            self.add_tokens(placeholders, trainable=False)
        if cfg.outputs:
            # the output side (signal tokens, projectors, decoders); its tokens come before cfg.signal_tokens so that
            # a checkpoint rebuilt without cfg.signal_tokens has the saved token order as a prefix
            from xmm.model.outputs import attach_outputs

            attach_outputs(self, cfg.outputs, decoders=decoders, registry=reg)
        if cfg.signal_tokens:
            self.add_tokens(cfg.signal_tokens, trainable=True)
        if cfg.lora is not None:
            self.add_lora(cfg.lora)
        return self.eval()  # like transformers' from_pretrained; the trainer calls train()

    @classmethod
    def from_pretrained(
        cls, path_or_repo: str | os.PathLike[str], *, llm: Any = None, revision: str | None = None, registry: Any = None,
        decoders: Mapping[str, Any] | None = None,
    ) -> MultimodalLM:
        """Load a checkpoint written by :meth:`save_pretrained` (a folder or a Hub repo id).

        ``llm``: optional preloaded ``(model, tokenizer, info)``; its embedding fingerprint must match the
        manifest's, else :class:`~xmm.errors.IncompatibleCheckpointError` says what was expected. ``decoders``:
        ready decoder objects for the checkpoint's outputs (decoders are never saved; by default they are rebuilt
        from the config's ``outputs``).
        """
        from xmm.model.checkpoint import load_checkpoint

        return load_checkpoint(cls, path_or_repo, llm=llm, revision=revision, registry=registry, decoders=decoders)

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write only what is trainable (bridges, new-token rows, LoRA, projectors, trainable encoders) and
        the ``xmm.json`` manifest; the directory is replaced atomically."""
        from xmm.model.checkpoint import save_checkpoint

        return save_checkpoint(self, directory)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Save the trained parts and upload them with a model card (:func:`xmm.hub.push_model`); returns the commit url."""
        from xmm import hub

        return hub.push_model(self, repo_id, **kwargs)

    # -- tokens and LoRA --------------------------------------------------------------------------------
    def _wrap_llm(self) -> None:
        if self._wrapped:
            return
        self.llm.set_input_embeddings(ExtendedEmbedding(self.llm.get_input_embeddings(), self.new_tokens))
        head = self.llm.get_output_embeddings()
        if head is None:
            raise ConfigError(f"{type(self.llm).__name__} has no output embeddings (LM head); it is not a causal LM")
        self.llm.set_output_embeddings(ExtendedLMHead(head, self.new_tokens))
        self._wrapped = True

    def add_tokens(self, tokens: Sequence[str], trainable: bool) -> list[int]:
        """Add special tokens to the tokenizer; their rows live in :attr:`new_tokens` (trainable or fixed).

        Returns their ids. Trainable rows start at the mean of the base embedding matrix. A non-trainable token
        already in the base vocabulary is reused as is.
        """
        from transformers import AddedToken

        self._wrap_llm()
        known = {t.text for t in self.new_tokens.tokens}
        vocab = self.tokenizer.get_vocab()
        infos: list[TokenInfo] = []
        for text in tokens:
            if text in known:
                raise ConfigError(f"token {text!r} was already added")
            before = vocab.get(text)
            self.tokenizer.add_tokens([AddedToken(text, special=True, normalized=False)], special_tokens=True)
            tid = int(self.tokenizer.convert_tokens_to_ids(text))
            if before is not None and before < self.base_vocab_size:
                if trainable:
                    raise ConfigError(f"token {text!r} is already in the LLM's vocabulary (id {tid}); its row is frozen, "
                                      "so it cannot be a trainable new token - choose another string")
                continue  # an existing token used as a placeholder: its row is replaced by media anyway
            infos.append(TokenInfo(text, tid, trainable))
        base = self.llm.get_input_embeddings().base.weight
        self.new_tokens.add(infos, init=base.detach().float().mean(0))
        return [int(self.tokenizer.convert_tokens_to_ids(t)) for t in tokens]

    def add_lora(self, settings: LoraSettings | dict[str, Any] | Any) -> None:
        """Inject LoRA adapters (peft) into the LLM in place; only the adapters are trainable and saved."""
        try:
            import peft
        except ImportError as e:  # pragma: no cover - peft is a core dependency
            from xmm.errors import MissingDependencyError

            raise MissingDependencyError("peft", purpose="LoRA") from e
        if self.lora_settings is not None:
            raise ConfigError("LoRA is already added to this model", field="lora")
        if isinstance(settings, dict):
            from xmm.bridges.base import validate_config

            settings = validate_config(LoraSettings, settings)
        if not isinstance(settings, LoraSettings):  # a peft.LoraConfig
            settings = LoraSettings(r=settings.r, alpha=settings.lora_alpha, dropout=settings.lora_dropout,
                                    target_modules=sorted(settings.target_modules))
        lcfg = peft.LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                               target_modules=list(settings.target_modules), bias="none",
                               base_model_name_or_path=self.llm_info.get("id"))
        try:
            peft.inject_adapter_in_model(lcfg, self.llm)
        except ValueError as e:
            raise ConfigError(f"cannot add LoRA: {e}", field="lora.target_modules") from e
        # peft marks everything but the adapters as frozen, which would also freeze our new-token rows
        self.new_tokens.trainable_in.requires_grad_(True)
        self.new_tokens.trainable_out.requires_grad_(True)
        self.lora_settings = settings
        self.config = self.config.model_copy(update={"lora": settings})
        self.train(self.training)  # new adapter modules start in train mode (dropout on); follow the model's mode

    def lora_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.llm.named_parameters() if "lora_" in n}

    def peft_config(self) -> Any:
        """The ``peft.LoraConfig`` of the injected adapter."""
        if self.lora_settings is None:
            raise ConfigError("this model has no LoRA adapter", field="lora")
        return self.llm.peft_config["default"]

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """The adapter weights in peft's naming (``...q_proj.lora_A.weight``), as peft saves them."""
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(self.llm, save_embedding_layers=False)

    def load_lora_state_dict(self, state: dict[str, torch.Tensor], *, source: str = "LoRA weights") -> None:
        """Load adapter weights saved by :meth:`lora_state_dict`, strictly."""
        from peft import set_peft_model_state_dict

        from xmm.errors import CheckpointError

        expected = set(self.lora_state_dict())
        if set(state) != expected:
            raise CheckpointError(f"{source}: LoRA weights do not match the model: missing {sorted(expected - set(state))[:3]}, "
                                  f"unexpected {sorted(set(state) - expected)[:3]}")
        result = set_peft_model_state_dict(self.llm, state)
        if getattr(result, "unexpected_keys", None):
            raise CheckpointError(f"{source}: unexpected LoRA weights {result.unexpected_keys[:3]}")

    # -- components ---------------------------------------------------------------------------------
    def named_components(self) -> dict[str, nn.Module | list[nn.Parameter]]:
        """What a training stage can make trainable: ``bridge:<m>``, ``encoder:<m>``, ``llm:lora``,
        ``llm:embeddings:new``, ``projector:<name>``. The LLM's base weights are never listed."""
        out: dict[str, nn.Module | list[nn.Parameter]] = {}
        for m, b in self.bridges.items():
            out[f"bridge:{m}"] = b
        for m, e in self.encoders.items():
            out[f"encoder:{m}"] = e
        lora = list(self.lora_parameters().values())
        if lora:
            out["llm:lora"] = lora
        if self.new_tokens.trainable_tokens:
            rows = [self.new_tokens.trainable_in]
            if not self.new_tokens.tied:
                rows.append(self.new_tokens.trainable_out)
            out["llm:embeddings:new"] = rows
        for name, p in self.projectors.items():
            out[f"projector:{name}"] = p
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
        """How many LLM positions an item takes: the bridge's Q (the modality default when Q depends on the input)."""
        bridge = self.bridges[item.modality] if item.modality in self.bridges else None
        q = bridge.num_output_tokens(item.modality) if bridge is not None and hasattr(bridge, "num_output_tokens") else None
        return int(q) if q else int(item.spec.num_query_tokens)

    def collator(self, **kwargs: Any) -> MultimodalCollator:
        """A :class:`MultimodalCollator` bound to this model's tokenizer, modalities and context length."""
        return MultimodalCollator(self, **kwargs)

    # -- numerics ---------------------------------------------------------------------------------------
    def autocast_enabled(self) -> bool:
        mode = self.config.autocast
        if mode == "off":
            return False
        if mode == "bf16":
            return True
        if self.device.type == "cuda":
            return bool(torch.cuda.is_bf16_supported())
        return self.device.type == "cpu" and _cpu_supports_bf16()

    def autocast(self) -> AbstractContextManager[Any]:
        """bf16 autocast on the model's device when :attr:`config.autocast` allows it."""
        if not self.autocast_enabled():
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    # -- media -----------------------------------------------------------------------------------------
    def encode_media(self, items: Sequence[MediaItem]) -> list[EncoderOutput]:
        """Run each item's encoder (batched per modality): one ``EncoderOutput`` per item, features ``[1, T, D]``.

        Frozen encoders run without gradients; trainable ones (e.g. device) keep them.
        """
        out: list[EncoderOutput | None] = [None] * len(items)
        for modality, idx in _group(items).items():
            enc = self.encoders[modality]
            batch = enc.encode([items[i].load() for i in idx])
            for i, o in zip(idx, batch.split()):
                out[i] = o
        return [o for o in out if o is not None]

    def _features(self, items: list[MediaItem]) -> list[EncoderOutput]:
        feats = self.feature_provider(items) if self.feature_provider is not None else self.encode_media(items)
        if len(feats) != len(items):
            raise ShapeError(f"the feature provider returned {len(feats)} outputs for {len(items)} media items")
        return feats

    def bridge_media(
        self, items: Sequence[MediaItem], features: Sequence[EncoderOutput],
        contexts: Sequence[torch.Tensor | None] | None = None,
    ) -> tuple[list[torch.Tensor], dict[str, dict[str, torch.Tensor]], dict[str, list[int]]]:
        """Bridge each item's features to LLM embeddings: ``([Q_i, d_llm] per item, aux per modality, groups)``.

        ``contexts``: per item, the LLM embeddings ``[L_i, d_llm]`` of its turn's text, given to bridges with
        ``uses_context`` (InstructBLIP-style instruction-aware bridges)."""
        embeds: list[torch.Tensor | None] = [None] * len(items)
        aux: dict[str, dict[str, torch.Tensor]] = {}
        groups = _group(items)
        for modality, idx in groups.items():
            batch = EncoderOutput.pad([features[i] for i in idx])
            feats = batch.features.to(self.device, torch.float32)
            bridge = self.bridges[modality]
            kwargs: dict[str, Any] = {}
            if getattr(bridge, "uses_context", False):
                ctx = [contexts[i] if contexts is not None else None for i in idx]
                kwargs["context"], kwargs["context_mask"] = pad_context(ctx, self.device)
            bout = bridge(feats, batch.mask.to(self.device), modality=modality, **kwargs)
            aux[modality] = dict(bout.aux)
            for row, i in enumerate(idx):
                embeds[i] = bout.embeds[row][bout.mask[row].bool()]
        return [e for e in embeds if e is not None], aux, groups

    def embed(self, batch: MultimodalBatch) -> tuple[SplicedInputs, dict[str, dict[str, torch.Tensor]], dict[str, list[int]]]:
        """Token embeddings with every placeholder replaced by its item's bridge embeddings."""
        batch = batch.to(self.device)
        token_embeds = self.llm.get_input_embeddings()(batch.input_ids)
        media_embeds: list[torch.Tensor] = []
        aux: dict[str, dict[str, torch.Tensor]] = {}
        groups: dict[str, list[int]] = {}
        if batch.media:
            feats = self._features(list(batch.media))
            contexts = None
            if any(getattr(self.bridges[it.modality], "uses_context", False) for it in batch.media if it.modality in self.bridges):
                contexts = [turn_text_embeddings(token_embeds, batch.input_ids, it, self.placeholder_ids) for it in batch.media]
            media_embeds, aux, groups = self.bridge_media(batch.media, feats, contexts)
        spliced = splice(token_embeds, batch.input_ids, batch.attention_mask, media_embeds, list(self.placeholder_ids),
                         labels=batch.labels, padding_side=batch.padding_side)
        return spliced, aux, groups

    # -- forward ---------------------------------------------------------------------------------------
    def forward(
        self,
        batch: MultimodalBatch,
        *,
        output_hidden_states: bool = False,
        logits: Literal["all", "labels", "none"] = "all",
    ) -> MultimodalOutput:
        """LM forward on a collated batch; the loss covers answer tokens only.

        ``logits="labels"`` computes the LM head only where a label follows (much cheaper in training);
        gradients flow through the frozen LLM into bridges, new-token rows and LoRA.
        """
        with self.autocast():
            spliced, aux, groups = self.embed(batch)
            if spliced.inputs_embeds.shape[1] > self.max_length:
                raise ContextLengthError(f"the batch is {spliced.inputs_embeds.shape[1]} positions long with its media; "
                                         f"the context is {self.max_length}")
            kwargs: dict[str, Any] = {
                "inputs_embeds": spliced.inputs_embeds,
                "attention_mask": spliced.attention_mask,
                "position_ids": spliced.position_ids,
                "use_cache": False,
                "output_hidden_states": output_hidden_states,
            }
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
            if keep is None:
                pred, target = all_logits[:, :-1], labels[:, 1:]
            else:
                pred, target = all_logits, labels[:, keep + 1]
            if bool((target != IGNORE_INDEX).any()):
                loss = nn.functional.cross_entropy(pred.float().reshape(-1, pred.shape[-1]), target.reshape(-1),
                                                   ignore_index=IGNORE_INDEX)
            else:  # nothing to learn in this batch; keep the graph so backward() still works
                loss = all_logits.float().sum() * 0.0 if all_logits.requires_grad else all_logits.new_zeros(())
        return MultimodalOutput(
            loss=loss,
            logits=None if logits == "none" else all_logits,
            aux=aux,
            inputs=spliced,
            media_groups=groups,
            hidden_states=out.hidden_states if output_hidden_states else None,
            logits_positions=keep,
        )

    # -- generation (see xmm.model.generation) ------------------------------------------------------------
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


def _adopt_llm(llm: nn.Module) -> None:
    """Reuse an LLM taken from an earlier ``MultimodalLM`` (saves reloading it): restore its own embedding and LM
    head modules. The earlier model must not be used afterwards. LoRA layers cannot be taken off, so such an LLM
    is refused."""
    emb = llm.get_input_embeddings()
    if not isinstance(emb, ExtendedEmbedding):
        return
    if any("lora_" in n for n, _ in llm.named_parameters()):
        raise ConfigError("this LLM carries LoRA adapters from another MultimodalLM; load a fresh one with "
                          "xmm.llm.load_llm()", field="llm")
    llm.set_input_embeddings(emb.base)
    head = llm.get_output_embeddings()
    if isinstance(head, ExtendedLMHead):
        llm.set_output_embeddings(head.base)


def _group(items: Sequence[MediaItem]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(it.modality, []).append(i)
    return groups


def _plugin_of(reg: Any, kind: str, name: str) -> dict[str, Any]:
    owner = reg.owner(kind, name)
    for p in reg.plugins:
        if p.name == owner and p.error is None:
            return {"name": p.name, "distribution": p.distribution, "version": p.version}
    return {"name": owner, "distribution": owner, "version": "?"}


def turn_text_embeddings(token_embeds: torch.Tensor, input_ids: torch.Tensor, item: MediaItem, placeholder_ids: Any) -> torch.Tensor | None:
    """The embeddings ``[L, d]`` of the text in ``item``'s chat turn (placeholders left out); None when unknown."""
    if item.context is None:
        return None
    start, end = item.context
    ids = input_ids[item.batch_index, start:end]
    keep = ~torch.isin(ids, torch.tensor(list(placeholder_ids), device=ids.device))
    return token_embeds[item.batch_index, start:end][keep]


def pad_context(ctx: list[torch.Tensor | None], device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Right-pad per-item context embeddings to ``[N, L, d]`` with a mask ``[N, L]``; (None, None) if all are None."""
    present = [c for c in ctx if c is not None]
    if not present:
        return None, None
    d = present[0].shape[-1]
    n = max(1, max(c.shape[0] for c in present))
    out = torch.zeros(len(ctx), n, d, device=device, dtype=torch.float32)
    mask = torch.zeros(len(ctx), n, dtype=torch.bool, device=device)
    for i, c in enumerate(ctx):
        if c is not None and c.shape[0]:
            out[i, : c.shape[0]] = c.float()
            mask[i, : c.shape[0]] = True
    return out, mask


def _bridge_fields(reg: Any, btype: str) -> set[str]:
    try:
        return set(reg.bridge_class(btype).config_class.model_fields)
    except RegistryError:
        return set()  # _create_bridge reports the unknown type


def _build_bridges(
    cfg: MultimodalConfig, specs: Mapping[str, ModalitySpec], encoders: Mapping[str, Encoder], hidden: int, reg: Any,
    *, vocab: int,
) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """One bridge per modality, or one shared module per ``shared_bridges`` entry, dims filled in. A bridge with a
    text branch (the Q-Former's stage-1 objectives) is fed the LLM tokenizer's ids, so its vocabulary defaults to
    the tokenizer's size."""
    bridges: dict[str, nn.Module] = {}
    names: dict[str, str] = {}
    shared: dict[str, nn.Module] = {}
    for name, mc in cfg.modalities.items():
        spec = specs[name]
        if mc.shared_bridge is not None:
            sname = mc.shared_bridge
            if sname not in shared:
                users = [m for m, c in cfg.modalities.items() if c.shared_bridge == sname]
                data = dict(cfg.shared_bridges[sname])
                dims = {encoders[m].output_dim for m in users}
                if "input_dim" not in data:
                    if len(dims) != 1:
                        raise ConfigError(
                            f"modalities {users} share bridge '{sname}' but their encoders have different output dims "
                            f"{sorted(dims)}; set shared_bridges.{sname}.input_dim or use bridges per modality",
                            field=f"shared_bridges.{sname}",
                        )
                    data["input_dim"] = dims.pop()
                data.setdefault("output_dim", hidden)
                fields = _bridge_fields(reg, data["type"])
                if "modalities" in fields:
                    data.setdefault("modalities", users)
                if "vocab_size" in fields and data.get("text_branch"):
                    data.setdefault("vocab_size", vocab)
                shared[sname] = _create_bridge(reg, data, f"shared_bridges.{sname}")
            bridges[name], names[name] = shared[sname], sname
            continue
        default = {"type": spec.default_bridge, **dict(spec.default_bridge_config)}
        if mc.bridge is None:
            data = default
        elif "type" not in mc.bridge or mc.bridge["type"] == spec.default_bridge:
            data = {**default, **mc.bridge}
        else:
            data = dict(mc.bridge)
        data.setdefault("input_dim", encoders[name].output_dim)
        data.setdefault("output_dim", hidden)
        fields = _bridge_fields(reg, data["type"])
        for qfield in ("num_query_tokens", "num_queries"):
            if qfield in fields:
                data.setdefault(qfield, spec.num_query_tokens)
                break
        if "vocab_size" in fields and data.get("text_branch"):
            data.setdefault("vocab_size", vocab)
        bridges[name], names[name] = _create_bridge(reg, data, f"modalities.{name}.bridge"), name
    return bridges, names


def _create_bridge(reg: Any, data: dict[str, Any], where: str) -> nn.Module:
    try:
        return reg.create_bridge(data)
    except RegistryError as e:
        raise ConfigError(str(e), field=f"{where}.type") from e
    except ConfigError as e:
        raise ConfigError(str(e), field=where) from e
