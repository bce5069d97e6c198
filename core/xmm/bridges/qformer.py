"""BLIP-2's Q-Former (Li et al., 2023), the X2L interface of X-LLM and the perceiver of ChatBridge.

Learnable queries ``[Q, H]`` pass through BERT-style post-LayerNorm layers: self-attention over the queries (and the text,
when given), cross-attention to the LayerNorm'ed frozen encoder features in every ``cross_attention_frequency``-th layer
(``layer_idx % frequency == 0``), and a feed-forward of their own (the text tokens have a separate one). A linear adapter
maps the query outputs to the LLM width. ``modalities`` gives ChatBridge's form: one Q-Former, one query set per
modality. ``text_branch=True`` adds the text embeddings and heads of BLIP-2's stage-1 objectives (see
:mod:`xmm.bridges.qformer_stage1`). Weights of transformers' ``Blip2QFormerModel`` load with :meth:`QFormerBridge.from_blip2`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from xmm.bridges._frozen import norm_linear, normalize_frozen
from xmm.bridges._layers import (
    attend,
    check_modality_names,
    has_tokens,
    init_weights,
    key_mask,
    make_query_sets,
    merge_heads,
    select_queries,
    split_heads,
)
from xmm.bridges._registry import register_bridge
from xmm.bridges.base import Bridge, BridgeConfig, BridgeOutput
from xmm.errors import CheckpointError, ConfigError


class QFormerConfig(BridgeConfig):
    """BLIP-2 defaults: 32 queries, 12 layers of width 768 with 12 heads, cross-attention every 2nd layer."""

    type: Literal["qformer"] = "qformer"
    num_queries: int = Field(32, gt=0, description="learnable queries per modality (Q)")
    hidden_size: int = Field(768, gt=0)
    num_layers: int = Field(12, gt=0)
    num_heads: int = Field(12, gt=0)
    intermediate_size: int = Field(3072, gt=0)
    cross_attention_frequency: int = Field(2, gt=0, description="layer i cross-attends when i % frequency == 0")
    layer_norm_eps: float = Field(1e-12, gt=0)
    hidden_dropout: float = Field(0.1, ge=0, lt=1)
    attention_dropout: float = Field(0.1, ge=0, lt=1)
    encoder_layernorm: bool = Field(True, description="BLIP-2's trainable ln_vision on the encoder features")
    encoder_layernorm_eps: float = Field(1e-5, gt=0)
    initializer_range: float = Field(0.02, gt=0)
    modalities: list[str] = Field(default_factory=list, description="ChatBridge: one query set per modality")
    text_branch: bool = Field(False, description="text embeddings + heads for the stage-1 ITC/ITM/ITG objectives")
    vocab_size: int = Field(30522, gt=0, description="text-branch vocabulary (the ids the trainer feeds)")
    max_text_length: int = Field(512, gt=1, description="text positions, including the [CLS]/[DEC] token")
    embed_dim: int = Field(256, gt=0, description="width of the ITC projections")
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="of the ITC and ITG cross-entropies, as BLIP-2")

    @field_validator("modalities")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        return check_modality_names(v)

    @model_validator(mode="after")
    def _heads(self) -> QFormerConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        return self


class QFormerAttention(nn.Module):
    """BERT attention block: multi-head attention, dense, dropout, ``LayerNorm(x + .)``. Fused qkv (self) or kv (cross)."""

    def __init__(self, cfg: QFormerConfig, cross: bool) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.heads = cfg.num_heads
        self.dropout = cfg.attention_dropout
        if cross:
            self.query = nn.Linear(h, h)
            self.kv = nn.Linear(cfg.input_dim, 2 * h)
        else:
            self.qkv = nn.Linear(h, 3 * h)
        self.dense = nn.Linear(h, h)
        self.drop = nn.Dropout(cfg.hidden_dropout)
        self.norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, kv: torch.Tensor | None = None) -> torch.Tensor:
        """x ``[B, L, H]``; mask bool ``[B, 1, L|1, S]``; kv ``[B, S, 2H]`` precomputed for cross-attention."""
        b, n, _ = x.shape
        if kv is None:
            q, k, v = self.qkv(x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q = split_heads(self.query(x), self.heads)
            k, v = kv.view(b, kv.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
            q = q.to(k.dtype)
        out = merge_heads(attend(q, k, v, mask, self.dropout if self.training else 0.0))
        return self.norm(self.drop(self.dense(out)) + x)


class QFormerFeedForward(nn.Module):
    """BERT intermediate + output: ``LayerNorm(x + dropout(W2 gelu(W1 x)))``."""

    def __init__(self, cfg: QFormerConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.drop = nn.Dropout(cfg.hidden_dropout)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.drop(self.fc2(F.gelu(self.fc1(x)))) + x)


class QFormerLayer(nn.Module):
    """Self-attention over [queries; text]; the queries alone cross-attend and use ``ffn_query``; text uses ``ffn_text``."""

    def __init__(self, cfg: QFormerConfig, cross: bool) -> None:
        super().__init__()
        self.attention = QFormerAttention(cfg, cross=False)
        self.crossattention = QFormerAttention(cfg, cross=True) if cross else None
        self.ffn_query = QFormerFeedForward(cfg)
        self.ffn_text = QFormerFeedForward(cfg) if cfg.text_branch else None

    def forward(
        self,
        h: torch.Tensor,
        num_query: int,
        self_mask: torch.Tensor | None,
        kv: torch.Tensor | None,
        cross_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        a = self.attention(h, self_mask)
        if num_query == 0:  # text only (the ITC text encoder)
            return self._text(a)
        q = a[:, :num_query] if a.shape[1] > num_query else a
        if self.crossattention is not None:
            q = self.crossattention(q, cross_mask, kv)
        q = self.ffn_query(q)
        if a.shape[1] > num_query:
            q = torch.cat([q, self._text(a[:, num_query:])], dim=1)
        return q

    def _text(self, t: torch.Tensor) -> torch.Tensor:
        if self.ffn_text is None:
            raise ConfigError("this Q-Former has no text branch; build it with text_branch=true", field="text_branch")
        return self.ffn_text(t)


class QFormerTextBranch(nn.Module):
    """BLIP-2's text side: BERT word/position embeddings (+ [CLS] and [DEC] rows), ITC projections, ITM and LM heads."""

    def __init__(self, cfg: QFormerConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.vocab_size = cfg.vocab_size
        self.cls_id = cfg.vocab_size  # the two extra rows: the text encoder's [CLS] and the decoder's [DEC]
        self.dec_id = cfg.vocab_size + 1
        self.word_embeddings = nn.Embedding(cfg.vocab_size + 2, h)
        self.position_embeddings = nn.Embedding(cfg.max_text_length, h)
        self.vision_proj = nn.Linear(h, cfg.embed_dim)
        self.text_proj = nn.Linear(h, cfg.embed_dim)
        self.itm_head = nn.Linear(h, 2)
        self.lm_dense = nn.Linear(h, h)
        self.lm_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.lm_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.temp = nn.Parameter(torch.tensor(0.07))

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` ids -> word + absolute position embeddings ``[B, L, H]`` (normalised later, with the queries)."""
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.word_embeddings(ids) + self.position_embeddings(pos)[None]

    def lm_logits(self, h: torch.Tensor) -> torch.Tensor:
        """BERT's LM head, decoder tied to the word embeddings: ``[B, L, H] -> [B, L, vocab_size]``."""
        h = self.lm_norm(F.gelu(self.lm_dense(h)))
        return F.linear(h, self.word_embeddings.weight[: self.vocab_size], self.lm_bias)


@register_bridge("qformer")
class QFormerBridge(Bridge):
    """``[B, T, D_enc]`` -> ``[B, Q, d_llm]`` through BLIP-2's Q-Former and a linear adapter."""

    config_class = QFormerConfig
    config: QFormerConfig

    def __init__(self, config: QFormerConfig) -> None:
        super().__init__(config)
        cfg = config
        self.queries = make_query_sets(cfg.modalities, cfg.num_queries, cfg.hidden_size, cfg.initializer_range)
        self.encoder_norm = nn.LayerNorm(cfg.input_dim, eps=cfg.encoder_layernorm_eps) if cfg.encoder_layernorm else None
        self.embed_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.embed_dropout = nn.Dropout(cfg.hidden_dropout)
        freq = cfg.cross_attention_frequency
        self.layers = nn.ModuleList(QFormerLayer(cfg, cross=i % freq == 0) for i in range(cfg.num_layers))
        self.proj = nn.Linear(cfg.hidden_size, cfg.output_dim)
        self.text = QFormerTextBranch(cfg) if cfg.text_branch else None
        init_weights(self, cfg.initializer_range)
        if self.text is not None:
            nn.init.constant_(self.text.temp, 0.07)

    @classmethod
    def tiny_config(cls, input_dim: int, output_dim: int) -> QFormerConfig:
        return QFormerConfig(
            input_dim=input_dim, output_dim=output_dim, num_queries=4, hidden_size=32, num_layers=2, num_heads=4,
            intermediate_size=64,
        )

    def num_output_tokens(self, num_input_tokens: int | None = None, *, modality: str | None = None) -> int:
        return self.config.num_queries

    # -- the query path --------------------------------------------------------------------------------------------
    def forward(
        self, features: torch.Tensor, mask: torch.Tensor | None = None, *, modality: str | None = None
    ) -> BridgeOutput:
        """features ``[B, T, D_enc]``, mask ``[B, T]`` -> embeds ``[B, Q, d_llm]``; an item without tokens is masked out."""
        valid = self.check_input(features, mask)
        hidden = self.query_hidden(features, None if mask is None else valid, modality=modality)
        out_mask = has_tokens(valid)[:, None].expand(-1, hidden.shape[1])
        return BridgeOutput(self.proj(hidden), out_mask)

    def query_hidden(
        self, features: torch.Tensor, mask: torch.Tensor | None = None, *, modality: str | None = None
    ) -> torch.Tensor:
        """The Q-Former's query outputs ``[B, Q, H]`` before the adapter (``Blip2QFormerModel``'s last_hidden_state)."""
        kvs = self.encoder_kv(features)
        queries = self.query_embeds(features.shape[0], modality)
        return self.run(queries, queries.shape[1], None, kvs, key_mask(mask))

    def query_embeds(self, batch: int, modality: str | None, text: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised ``[B, Q (+L), H]`` input of the first layer: the queries, then the text embeddings if given."""
        q = select_queries(self.queries, modality, type(self).__name__)
        h = q[None].expand(batch, -1, -1)
        if text is not None:
            h = torch.cat([h, text.to(h.dtype)], dim=1)
        return self.embed_dropout(self.embed_norm(h))

    def encoder_kv(self, features: torch.Tensor) -> list[torch.Tensor]:
        """Keys and values ``[B, T, 2H]`` of every cross-attention layer for the (normalised) encoder features."""
        crosses = [layer.crossattention for layer in self.layers if layer.crossattention is not None]
        ln = self.encoder_norm
        if ln is not None and not features.requires_grad:
            # frozen encoder: skip the input-gradient matmuls that plain autograd would spend to reach ln_vision
            xhat = normalize_frozen(features, ln.eps, ln.weight.dtype)
            return [norm_linear(xhat, ln.weight, ln.bias, c.kv.weight, c.kv.bias) for c in crosses]
        enc = ln(features) if ln is not None else features
        return [c.kv(enc) for c in crosses]

    def run(
        self,
        h: torch.Tensor,
        num_query: int,
        self_mask: torch.Tensor | None,
        kvs: list[torch.Tensor] | None,
        cross_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """All layers over ``h [B, L, H]`` whose first ``num_query`` rows are queries; ``kvs`` from :meth:`encoder_kv`."""
        it = iter(kvs or [])
        for layer in self.layers:
            kv = next(it) if layer.crossattention is not None and num_query > 0 else None
            h = layer(h, num_query, self_mask, kv, cross_mask)
        return h

    # -- BLIP-2 stage 1 ----------------------------------------------------------------------------------------------
    def stage1_losses(
        self,
        features: torch.Tensor,
        mask: torch.Tensor | None,
        text_ids: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        *,
        modality: str | None = None,
        objectives: Iterable[str] = ("itc", "itm", "itg"),
    ) -> dict[str, torch.Tensor]:
        """BLIP-2's representation-learning losses (scalars) for media ``[B, T, D_enc]`` paired with text ``[B, L]``.

        ``itc``: media-text contrastive; ``itm``: matching with in-batch hard negatives; ``itg``: media-grounded text
        generation. ``text_ids`` are plain token ids (no special tokens; the bridge adds its own [CLS]/[DEC]).
        """
        from xmm.bridges.qformer_stage1 import stage1_losses

        return stage1_losses(self, features, mask, text_ids, text_mask, modality=modality, objectives=objectives)

    # -- transformers' BLIP-2 weights --------------------------------------------------------------------------------
    def load_blip2_qformer_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a ``Blip2QFormerModel`` state dict (``layernorm.*``, ``encoder.layer.N.*``) into this Q-Former, strictly."""
        ours: dict[str, torch.Tensor] = {}
        used: set[str] = set()

        def take(key: str) -> torch.Tensor:
            if key not in state:
                raise CheckpointError(f"Blip2QFormerModel state dict: missing '{key}'")
            used.add(key)
            return state[key]

        def linear(dst: str, *srcs: str) -> None:
            for part in ("weight", "bias"):
                ours[f"{dst}.{part}"] = torch.cat([take(f"{s}.{part}") for s in srcs], dim=0)

        def norm(dst: str, src: str) -> None:
            ours[f"{dst}.weight"], ours[f"{dst}.bias"] = take(f"{src}.weight"), take(f"{src}.bias")

        norm("embed_norm", "layernorm")
        for i, layer in enumerate(self.layers):
            s, d = f"encoder.layer.{i}", f"layers.{i}"
            att = f"{s}.attention"
            linear(f"{d}.attention.qkv", f"{att}.attention.query", f"{att}.attention.key", f"{att}.attention.value")
            linear(f"{d}.attention.dense", f"{att}.output.dense")
            norm(f"{d}.attention.norm", f"{att}.output.LayerNorm")
            if layer.crossattention is not None:
                ca = f"{s}.crossattention"
                linear(f"{d}.crossattention.query", f"{ca}.attention.query")
                linear(f"{d}.crossattention.kv", f"{ca}.attention.key", f"{ca}.attention.value")
                linear(f"{d}.crossattention.dense", f"{ca}.output.dense")
                norm(f"{d}.crossattention.norm", f"{ca}.output.LayerNorm")
            linear(f"{d}.ffn_query.fc1", f"{s}.intermediate_query.dense")
            linear(f"{d}.ffn_query.fc2", f"{s}.output_query.dense")
            norm(f"{d}.ffn_query.norm", f"{s}.output_query.LayerNorm")
            if layer.ffn_text is not None:
                linear(f"{d}.ffn_text.fc1", f"{s}.intermediate.dense")
                linear(f"{d}.ffn_text.fc2", f"{s}.output.dense")
                norm(f"{d}.ffn_text.norm", f"{s}.output.LayerNorm")
        unexpected = sorted(k for k in state if k not in used)
        if unexpected:
            raise CheckpointError(f"Blip2QFormerModel state dict has weights this Q-Former has no place for: {unexpected[:5]}")
        self._copy_in(ours, "Blip2QFormerModel state dict")

    def _copy_in(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        own = self.state_dict()
        for k, v in tensors.items():
            if k not in own:
                raise CheckpointError(f"{source}: '{k}' has no place in {type(self).__name__}")
            if own[k].shape != v.shape:
                raise CheckpointError(f"{source}: '{k}' has shape {tuple(v.shape)}, the Q-Former expects {tuple(own[k].shape)}")
        with torch.no_grad():
            for k, v in tensors.items():
                own[k].copy_(v)

    @classmethod
    def from_blip2(cls, model: nn.Module, *, output_dim: int | None = None, **overrides: Any) -> QFormerBridge:
        """Build from transformers' ``Blip2QFormerModel``, or from any BLIP-2 model holding ``.qformer`` (then the
        query tokens, the vision ``post_layernorm`` as ``ln_vision`` and the ``language_projection`` come along)."""
        qformer = getattr(model, "qformer", model)
        qcfg = qformer.config
        if getattr(qcfg, "hidden_act", "gelu") != "gelu":
            raise ConfigError(f"only the exact GELU is implemented, the BLIP-2 model uses {qcfg.hidden_act!r}", field="hidden_act")
        query_tokens = getattr(model, "query_tokens", None)
        vision = getattr(model, "vision_model", None)
        ln_vision = getattr(vision, "post_layernorm", None)
        projection = getattr(model, "language_projection", None)
        if output_dim is None:
            output_dim = projection.out_features if projection is not None else qcfg.hidden_size
        data: dict[str, Any] = {
            "type": "qformer",
            "input_dim": qcfg.encoder_hidden_size,
            "output_dim": output_dim,
            "num_queries": query_tokens.shape[1] if query_tokens is not None else 32,
            "hidden_size": qcfg.hidden_size,
            "num_layers": qcfg.num_hidden_layers,
            "num_heads": qcfg.num_attention_heads,
            "intermediate_size": qcfg.intermediate_size,
            "cross_attention_frequency": qcfg.cross_attention_frequency,
            "layer_norm_eps": qcfg.layer_norm_eps,
            "hidden_dropout": qcfg.hidden_dropout_prob,
            "attention_dropout": qcfg.attention_probs_dropout_prob,
            "initializer_range": qcfg.initializer_range,
            "text_branch": bool(getattr(qcfg, "use_qformer_text_input", False)),
            "vocab_size": qcfg.vocab_size,
        }
        if ln_vision is not None:
            data["encoder_layernorm_eps"] = ln_vision.eps
        data.update(overrides)
        bridge = cls.from_config(data)
        bridge.load_blip2_qformer_state_dict(qformer.state_dict())
        extra: dict[str, torch.Tensor] = {}
        if query_tokens is not None:
            for name in bridge.queries:
                extra[f"queries.{name}"] = query_tokens.detach()[0]
        if ln_vision is not None and bridge.encoder_norm is not None:
            extra["encoder_norm.weight"], extra["encoder_norm.bias"] = ln_vision.weight.detach(), ln_vision.bias.detach()
        if projection is not None and projection.out_features == bridge.config.output_dim:
            extra["proj.weight"], extra["proj.bias"] = projection.weight.detach(), projection.bias.detach()
        bridge._copy_in(extra, type(model).__name__)
        return bridge
