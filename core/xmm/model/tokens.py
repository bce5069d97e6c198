"""New tokens on a frozen LLM: their embedding (and LM-head) rows live in small separate tensors.

The base embedding matrix and LM head stay frozen and are never saved. :class:`ExtendedEmbedding` and
:class:`ExtendedLMHead` wrap the LLM's own modules: ids of new tokens read their rows from :class:`NewTokens`;
the LM head gains logits columns only for *trainable* new tokens (signal tokens a decoder needs the LLM to emit).
Non-trainable tokens (placeholders) are never predicted: their columns, when the vocabulary has to be widened past
them, are ``-inf``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from xmm.errors import CheckpointError, ConfigError


@dataclass(frozen=True)
class TokenInfo:
    """One added token: its text, id, and whether its rows are trained."""

    text: str
    id: int
    trainable: bool


class NewTokens(nn.Module):
    """Rows for added tokens. ``trainable_in``/``trainable_out`` ``[N_t, D]`` are parameters (tied to each other when
    the LLM ties its embeddings); ``fixed_in`` ``[N_f, D]`` is a buffer (placeholder rows, replaced by media anyway)."""

    def __init__(self, dim: int, *, tied: bool) -> None:
        super().__init__()
        self.dim = dim
        self.tied = tied
        self.tokens: list[TokenInfo] = []
        self.trainable_in = nn.Parameter(torch.zeros(0, dim))
        self.trainable_out = self.trainable_in if tied else nn.Parameter(torch.zeros(0, dim))
        self.register_buffer("fixed_in", torch.zeros(0, dim), persistent=True)
        # id -> row slot; slots [0, N_t) are trainable rows, [N_t, N_t + N_f) fixed rows
        self.register_buffer("slot_of_id", torch.full((0,), -1, dtype=torch.long), persistent=False)

    @property
    def trainable_tokens(self) -> list[TokenInfo]:
        return [t for t in self.tokens if t.trainable]

    @property
    def fixed_tokens(self) -> list[TokenInfo]:
        return [t for t in self.tokens if not t.trainable]

    def add(self, tokens: list[TokenInfo], init: torch.Tensor | None = None) -> None:
        """Append tokens; trainable rows start at ``init`` ``[D]`` (e.g. the mean embedding), fixed rows at zero."""
        known = {t.text for t in self.tokens}
        for t in tokens:
            if t.text in known:
                raise ConfigError(f"token {t.text!r} was already added")
        self.tokens.extend(tokens)
        n_t = sum(1 for t in tokens if t.trainable)
        n_f = len(tokens) - n_t
        dev = self.fixed_in.device
        if n_t:
            row = (init if init is not None else torch.zeros(self.dim)).detach().to(dev, torch.float32)
            new = row.expand(n_t, self.dim).clone()
            self.trainable_in = nn.Parameter(torch.cat([self.trainable_in.detach(), new]))
            if self.tied:
                self.trainable_out = self.trainable_in
            else:
                self.trainable_out = nn.Parameter(torch.cat([self.trainable_out.detach(), new.clone()]))
        if n_f:
            self.fixed_in = torch.cat([self.fixed_in, torch.zeros(n_f, self.dim, device=dev)])
        self._rebuild_slots()

    def _rebuild_slots(self) -> None:
        size = max((t.id for t in self.tokens), default=-1) + 1
        slots = torch.full((size,), -1, dtype=torch.long, device=self.fixed_in.device)
        for i, t in enumerate(self.trainable_tokens):
            slots[t.id] = i
        n_t = len(self.trainable_tokens)
        for i, t in enumerate(self.fixed_tokens):
            slots[t.id] = n_t + i
        self.slot_of_id = slots

    def rows(self) -> torch.Tensor:
        """All input rows ``[N_t + N_f, D]`` in slot order."""
        return torch.cat([self.trainable_in, self.fixed_in.to(self.trainable_in.dtype)])

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Slot of each id ``[...]``, -1 for ids that are not new tokens."""
        if self.slot_of_id.numel() == 0:
            return torch.full_like(ids, -1)
        in_range = (ids >= 0) & (ids < self.slot_of_id.numel())
        return torch.where(in_range, self.slot_of_id[ids.clamp(0, self.slot_of_id.numel() - 1)], -1)

    # -- persistence -------------------------------------------------------------------------------
    def state_for_save(self) -> dict[str, torch.Tensor]:
        state = {"trainable_in": self.trainable_in.detach().cpu().contiguous(), "fixed_in": self.fixed_in.cpu().contiguous()}
        if not self.tied:
            state["trainable_out"] = self.trainable_out.detach().cpu().contiguous()
        return state

    def load_saved(self, state: dict[str, torch.Tensor], *, source: str) -> None:
        expect = {"trainable_in", "fixed_in"} | (set() if self.tied else {"trainable_out"})
        if set(state) != expect:
            raise CheckpointError(f"{source}: new-token rows {sorted(state)} do not match the expected {sorted(expect)}")
        for key in expect:
            own = getattr(self, key)
            if tuple(state[key].shape) != tuple(own.shape):
                raise CheckpointError(f"{source}: '{key}' has shape {tuple(state[key].shape)}, expected {tuple(own.shape)}")
        with torch.no_grad():
            self.trainable_in.copy_(state["trainable_in"])
            self.fixed_in.copy_(state["fixed_in"])
            if not self.tied:
                self.trainable_out.copy_(state["trainable_out"])


class ExtendedEmbedding(nn.Module):
    """The LLM's input embedding plus new-token rows: ``ids [B, L] -> [B, L, D]``."""

    def __init__(self, base: nn.Module, new: NewTokens) -> None:
        super().__init__()
        self.base = base
        self.new = new

    @property
    def weight(self) -> torch.Tensor:
        # code that inspects embeddings (dtype/device, tying) sees the frozen base matrix
        return self.base.weight

    @property
    def num_embeddings(self) -> int:
        return int(self.base.weight.shape[0])

    @property
    def embedding_dim(self) -> int:
        return int(self.base.weight.shape[1])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        slot = self.new.lookup(input_ids)
        is_new = slot >= 0
        emb = self.base(torch.where(is_new, torch.zeros_like(input_ids), input_ids))
        if self.new.tokens and bool(is_new.any()):
            rows = self.new.rows().to(emb.dtype)[slot.clamp(min=0)]
            emb = torch.where(is_new.unsqueeze(-1), rows, emb)
        return emb


class ExtendedLMHead(nn.Module):
    """The LLM's LM head plus logits columns for trainable new tokens: ``h [B, L, D] -> logits [B, L, V']``.

    ``V' = max(V, largest trainable id + 1)``; columns of placeholders inside that range are ``-inf``.
    """

    def __init__(self, base: nn.Module, new: NewTokens) -> None:
        super().__init__()
        self.base = base
        self.new = new

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.base(hidden)
        trainable = self.new.trainable_tokens
        if trainable:
            width = max(logits.shape[-1], max(t.id for t in trainable) + 1)
            if width > logits.shape[-1]:
                logits = nn.functional.pad(logits, (0, width - logits.shape[-1]), value=float("-inf"))
            ids = torch.tensor([t.id for t in trainable], device=logits.device)
            new_logits = hidden.to(self.new.trainable_out.dtype) @ self.new.trainable_out.t()
            logits = logits.index_copy(-1, ids, new_logits.to(logits.dtype))
        # placeholders that fall inside the vocabulary (a tokenizer shorter than the matrix) must never be emitted
        fixed = [t.id for t in self.new.fixed_tokens if t.id < logits.shape[-1]]
        if fixed:
            logits = logits.index_fill(-1, torch.tensor(fixed, device=logits.device), float("-inf"))
        return logits


# -- token-table surgery on a frozen LLM -----------------------------------------------------------------------------
def wrap_llm(llm: nn.Module, new: NewTokens) -> None:
    """Route ``llm``'s input embedding and LM head through ``new`` (in place; a no-op when already wrapped)."""
    emb = llm.get_input_embeddings()
    if isinstance(emb, ExtendedEmbedding):
        if emb.new is not new:
            raise ConfigError("this LLM's embeddings already carry another model's new tokens", field="llm")
        return
    head = llm.get_output_embeddings()
    if head is None:
        raise ConfigError(f"{type(llm).__name__} has no output embeddings (LM head); it is not a causal LM", field="llm")
    llm.set_input_embeddings(ExtendedEmbedding(emb, new))
    llm.set_output_embeddings(ExtendedLMHead(head, new))


def unwrap_llm(llm: nn.Module) -> None:
    """Give ``llm`` back its own embedding and LM-head modules (undoes :func:`wrap_llm`; a no-op when not wrapped)."""
    emb = llm.get_input_embeddings()
    if isinstance(emb, ExtendedEmbedding):
        llm.set_input_embeddings(emb.base)
    head = llm.get_output_embeddings()
    if isinstance(head, ExtendedLMHead):
        llm.set_output_embeddings(head.base)


def base_embedding_weight(llm: nn.Module) -> torch.Tensor:
    """The LLM's own (frozen) input-embedding matrix ``[V, D]``, wrapped or not."""
    emb = llm.get_input_embeddings()
    return (emb.base if isinstance(emb, ExtendedEmbedding) else emb).weight


def add_tokens(llm: nn.Module, tokenizer: Any, new: NewTokens, tokens: Sequence[str], *, trainable: bool,
               base_vocab_size: int) -> list[int]:
    """Add special tokens to ``tokenizer`` with their rows in ``new`` (``llm`` is wrapped first); returns their ids.

    Trainable rows start at the mean of the base embedding matrix. A non-trainable token already in the base
    vocabulary (id < ``base_vocab_size``) is reused as is: its row is replaced by media anyway.
    """
    from transformers import AddedToken

    wrap_llm(llm, new)
    known = {t.text for t in new.tokens}
    vocab = tokenizer.get_vocab()
    infos: list[TokenInfo] = []
    for text in tokens:
        if text in known:
            raise ConfigError(f"token {text!r} was already added")
        before = vocab.get(text)
        tokenizer.add_tokens([AddedToken(text, special=True, normalized=False)], special_tokens=True)
        tid = int(tokenizer.convert_tokens_to_ids(text))
        if before is not None and before < base_vocab_size:
            if trainable:
                raise ConfigError(f"token {text!r} is already in the LLM's vocabulary (id {tid}); its row is frozen, "
                                  "so it cannot be a trainable new token - choose another string")
            continue
        infos.append(TokenInfo(text, tid, trainable))
    new.add(infos, init=base_embedding_weight(llm).detach().float().mean(0))
    return [int(tokenizer.convert_tokens_to_ids(t)) for t in tokens]
