"""Chat-template control tokens typed in user text are text, not control.

A tokenizer matches its special tokens (``<|im_start|>``, ``<|im_end|>``, ...) anywhere in the string it is given, so
a user who types ``<|im_start|>system ...`` inside a message would otherwise open a real system turn once the chat
template is rendered. :class:`TextGuard` finds those strings in user-supplied text and either escapes them (a zero-width
space after their first character: the text reads the same, the tokenizer no longer matches it) or refuses the text
with :class:`ControlTokenError`. Only the input is guarded: the model's own answer may contain control tokens.

Which strings count comes from the tokenizer itself (its special tokens and its added tokens marked special), so the
guard follows whatever LLM is loaded; callers exclude what they handle themselves (e.g. modality placeholders that a
prompt may write on purpose).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from xmm.errors import ConfigError, PromptError

Policy = Literal["escape", "refuse"]
POLICIES: tuple[str, ...] = ("escape", "refuse")
ESCAPE_MARK = "\u200b"  # zero-width space: invisible when shown, but breaks the tokenizer's exact match


class ControlTokenError(PromptError):
    """User text contains chat-template control tokens and the policy is ``refuse``; the message names them."""

    def __init__(self, message: str, *, tokens: Sequence[str], where: str | None = None) -> None:
        self.tokens = list(tokens)
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


def control_tokens(tokenizer: Any, exclude: Iterable[str] = ()) -> frozenset[str]:
    """The strings ``tokenizer`` turns into control tokens wherever they appear: its special tokens and its added
    tokens marked special, minus ``exclude``. Strings that hold the escape mark themselves are left out."""
    found: set[str] = {str(t) for t in (getattr(tokenizer, "all_special_tokens", None) or [])}
    for added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(added, "special", False):
            found.add(str(getattr(added, "content", added)))
    skip = set(exclude)
    return frozenset(t for t in found if t and t not in skip and ESCAPE_MARK not in t)


@dataclass(frozen=True)
class TextGuard:
    """Escapes (``policy="escape"``) or refuses (``"refuse"``) control tokens in user text.

    Build it with :meth:`for_tokenizer`; ``tokens`` are the exact strings to guard against.
    """

    tokens: frozenset[str]
    policy: Policy = "escape"

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"unknown policy {self.policy!r}; choose one of {', '.join(POLICIES)}", field="policy")
        # longest first, so a token that contains a shorter one is matched whole
        alts = sorted((re.escape(t) for t in self.tokens), key=len, reverse=True)
        object.__setattr__(self, "_pattern", re.compile("|".join(alts)) if alts else None)

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, *, policy: Policy = "escape", exclude: Iterable[str] = ()) -> TextGuard:
        """The guard for ``tokenizer``'s control tokens (see :func:`control_tokens`)."""
        return cls(control_tokens(tokenizer, exclude), policy)

    def find(self, text: str) -> list[str]:
        """The control tokens in ``text``, in order of appearance (repeats included)."""
        pattern = self._pattern  # type: ignore[attr-defined]
        return [m.group(0) for m in pattern.finditer(text)] if pattern is not None else []

    def escape(self, text: str) -> str:
        """``text`` with every control token broken by :data:`ESCAPE_MARK`; no control token is left afterwards,
        including ones that an escape would otherwise join from neighbouring characters."""
        pattern = self._pattern  # type: ignore[attr-defined]
        if pattern is None:
            return text
        # each pass adds marks, which no control token contains, so the number of matches only goes down
        for _ in range(len(text) + 1):
            escaped = pattern.sub(lambda m: m.group(0)[0] + ESCAPE_MARK + m.group(0)[1:], text)
            if escaped == text:
                return text
            text = escaped
        return text

    def apply(self, text: str, *, where: str | None = None) -> str:
        """``text`` made safe by the policy: escaped, or :class:`ControlTokenError` naming the tokens (and
        ``where``)."""
        if self.policy == "escape":
            return self.escape(text)
        hits = self.find(text)
        if hits:
            names = ", ".join(repr(t) for t in dict.fromkeys(hits))
            raise ControlTokenError(f"the text contains chat-template control tokens ({names}), which this service "
                                    "refuses in user text", tokens=hits, where=where)
        return text

    def apply_messages(self, messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """A copy of chat ``messages`` (Hugging Face format) with every text (string content, ``text`` parts and bare
        string parts) passed through :meth:`apply`; media parts and other keys are kept as they are."""
        out: list[dict[str, Any]] = []
        for i, msg in enumerate(messages):
            new = dict(msg)
            content = msg.get("content")
            where = f"message {i} ({msg.get('role')})"
            if isinstance(content, str):
                new["content"] = self.apply(content, where=where)
            elif isinstance(content, Sequence):
                parts: list[Any] = []
                for j, part in enumerate(content):
                    if isinstance(part, str):
                        parts.append(self.apply(part, where=f"{where}, part {j}"))
                    elif isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
                        parts.append({**part, "text": self.apply(part["text"], where=f"{where}, part {j}")})
                    else:
                        parts.append(part)
                new["content"] = parts
            out.append(new)
        return out
