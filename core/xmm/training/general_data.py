"""General instruction examples made offline by the frozen LLM itself (self-distillation), to mix into training.

A bridge trained on one kind of question learns to push its answers into every prompt ("Describe this image." ->
"Five."). Mixing in examples whose answer has nothing to do with the task keeps the LLM's own behaviour: each example
here is a varied everyday prompt (explain, list, translate, count, advise, ...) answered by the frozen LLM *before*
training, greedily and without media, so the target is what the LLM says anyway. ``with_media`` of them also carry a
media item from the task's data in front of the prompt, with the same text-only answer: those teach the bridge that
media do not change the answer to a question that is not about them.

Nothing is downloaded: the prompts come from the templates below, the answers from the LLM in the model.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from xmm.progress import Progress

TEMPLATES = (
    "Explain {topic} in two sentences.",
    "Tell me one interesting fact about {topic}.",
    "Give one practical tip about {topic}.",
    "Write one friendly sentence about {topic}.",
    "Why do people care about {topic}?",
    "List three words you associate with {topic}.",
    "Describe {topic} to a child in one sentence.",
    "What is a common mistake people make with {topic}?",
    "Write a short question someone might ask about {topic}.",
    "Summarise {topic} in one line.",
)
TOPICS = (
    "the water cycle", "photosynthesis", "a rainbow", "the moon", "volcanoes", "gravity", "recycling", "sleep",
    "drinking water", "exercise", "a healthy breakfast", "reading books", "learning a language", "music practice",
    "gardening", "bicycles", "trains", "airports", "the ocean", "deserts", "forests", "bees", "cats", "dogs",
    "the weather", "winter", "saving money", "cooking pasta", "making tea", "friendship", "teamwork", "time management",
    "the internet", "passwords", "email etiquette", "batteries", "electricity", "maps", "museums", "chess",
)
FIXED = (
    "What is the capital of {country}?", "Say hello in {language}.", "How do you say thank you in {language}?",
    "What is {a} plus {b}?", "What is {a} times {b}?", "Count from one to {n} in words.",
    "Name a colour that is not {colour}.", "Is {a} larger than {b}? Answer yes or no and explain briefly.",
    "Spell the word '{word}' backwards.", "Give a synonym for '{word}'.",
)
COUNTRIES = ("France", "Japan", "Italy", "Canada", "Egypt", "Brazil", "Spain", "Kenya", "Norway", "India")
LANGUAGES = ("French", "Spanish", "German", "Italian")
COLOURS = ("red", "blue", "green", "yellow")
WORDS = ("happy", "quick", "bright", "garden", "river", "simple", "window", "travel")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def general_prompts(n: int, *, seed: int = 0) -> list[str]:
    """``n`` varied instruction prompts (distinct while the templates last), the same for the same seed."""
    rng = random.Random(seed)
    pool = [t.format(topic=topic) for t in TEMPLATES for topic in TOPICS]
    for template in FIXED:
        for _ in range(12):
            pool.append(template.format(country=rng.choice(COUNTRIES), language=rng.choice(LANGUAGES),
                                        a=rng.randint(2, 40), b=rng.randint(2, 40), n=rng.randint(3, 9),
                                        colour=rng.choice(COLOURS), word=rng.choice(WORDS)))
    pool = list(dict.fromkeys(pool))
    rng.shuffle(pool)
    return [pool[i % len(pool)] for i in range(n)]


def _complete_sentences(text: str) -> str:
    """An answer cut by the token budget ends at its last full sentence (when it has one)."""
    text = text.strip()
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]] if ends and ends[-1] < len(text) else text


def distil_answers(model: Any, prompts: Sequence[str], *, max_new_tokens: int = 64, batch_size: int = 8,
                   progress: bool = True) -> list[str]:
    """The frozen LLM's own greedy answers to text-only ``prompts`` (through ``model``'s chat template and system
    prompt, as training will present them)."""
    answers: list[str] = []
    with Progress(len(prompts), desc="general data", unit="answer", enabled=progress) as bar:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            convs = [[{"role": "user", "content": p}] for p in chunk]
            result = model.generate(convs, max_new_tokens=max_new_tokens, do_sample=False, run_decoders=False)
            answers += [_complete_sentences(t) for t in result.texts]
            bar.update(len(chunk))
    return answers


def media_parts(manifest: str | os.PathLike[str], limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` distinct media parts (``{"type", "path"}``, paths as the manifest wrote them) from the first user
    messages of an xmm JSONL manifest."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    with open(manifest, encoding="utf-8") as f:
        for line in f:
            if len(found) >= limit:
                break
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            messages = record.get("messages") if isinstance(record, Mapping) else None
            for m in messages or []:
                if not isinstance(m, Mapping) or m.get("role") != "user" or isinstance(m.get("content"), str):
                    continue
                for p in m.get("content") or []:
                    if isinstance(p, Mapping) and p.get("type") != "text" and isinstance(p.get("path"), str):
                        found.setdefault((p["type"], p["path"]), {"type": p["type"], "path": p["path"]})
                break
    return list(found.values())


def write_general_manifest(path: str | os.PathLike[str], prompts: Sequence[str], answers: Sequence[str], *,
                           media: Sequence[Mapping[str, Any]] = (), with_media: float = 0.5, copies: int = 1,
                           seed: int = 0) -> Path:
    """Write the examples as an xmm manifest (each line ``copies`` times, spread out): a ``with_media`` share of them
    carries one of ``media`` (paths relative to ``path``'s folder: write it beside the task's manifest) before the
    prompt. ``meta.task`` is ``general`` so evaluations tell them apart. Empty answers are left out."""
    rng = random.Random(seed)
    lines = []
    for prompt, answer in zip(prompts, answers):
        if not answer.strip():
            continue
        content: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
        if media and rng.random() < with_media:
            content.insert(0, dict(rng.choice(list(media))))
        lines.append(json.dumps({"messages": [{"role": "user", "content": content},
                                              {"role": "assistant", "content": [{"type": "text", "text": answer}]}],
                                 "meta": {"task": "general", "source": "self-distilled"}}, ensure_ascii=False))
    ordered = [line for _ in range(copies) for line in lines]
    rng.shuffle(ordered)
    from xmm.io import atomic_write

    text = "".join(line + "\n" for line in ordered)
    return atomic_write(Path(path), lambda f: f.write_text(text, encoding="utf-8"))


def general_count(fraction: float, task_examples: int, *, max_unique: int) -> tuple[int, int]:
    """(unique examples, copies of each) so that general examples are ``fraction`` of the mixed data."""
    if not 0 < fraction < 1:
        raise ValueError(f"the general share must be between 0 and 1 (exclusive), got {fraction}")
    wanted = max(1, math.ceil(task_examples * fraction / (1 - fraction)))
    unique = min(wanted, max_unique)
    return unique, max(1, round(wanted / unique))
