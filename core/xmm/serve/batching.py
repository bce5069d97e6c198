"""Concurrent requests answered together: a queue feeding ``generate_batch`` with a batch of conversations.

One worker thread owns the model. It takes whatever is queued (waiting ``batch_wait`` for company after the first
request), groups requests that can share one ``generate`` call (same sampling settings, prompt + answer within the
context), and runs each group as one left-padded batch. Every row is followed token by token: its text is streamed
to its client, and it ends on its own end-of-turn token, its own ``max_tokens``, a stop string or a client that went
away (a per-row stopping criterion), so a short answer does not wait for a long one to be cut.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from xmm.errors import XmmError
from xmm.serve.content import Prompt
from xmm.serve.errors import APIError, from_xmm_error, internal_error
from xmm.serve.memory import release_free_memory
from xmm.serve.outputs import output_parts

log = logging.getLogger(__name__)



@dataclass
class Sampling:
    """Generation settings; only requests with equal settings share a batch (a seed is honoured alone)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None

    def key(self, job_id: int) -> tuple[Any, ...]:
        if self.seed is not None:
            return ("seeded", job_id)
        if not self.do_sample:
            return ("greedy",)
        return ("sample", self.temperature, self.top_p, self.top_k)


@dataclass
class Result:
    """A finished answer."""

    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    outputs: list[dict[str, Any]] = field(default_factory=list)


class Job:
    """One request in the queue; its events (``("delta", str)``, ``("done", Result)``, ``("error", APIError)``) are
    delivered on the asyncio loop that submitted it."""

    _ids = iter(range(1 << 62))

    def __init__(self, prompt: Prompt, *, max_tokens: int, sampling: Sampling, stop: list[str], positions: int,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.id = next(Job._ids)
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.sampling = sampling
        self.stop = stop
        self.positions = positions  # LLM positions of the prompt with its media
        self.loop = loop
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.cancelled = threading.Event()
        # worker-side decoding state
        self.ids: list[int] = []
        self.generated = 0
        self.text = ""
        self.sent = 0
        self.done = False
        self.finish_reason = "length"

    def emit(self, kind: str, value: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: the server is shutting down
            self.cancelled.set()

    def cancel(self) -> None:
        self.cancelled.set()


class RowStreamer:
    """A transformers streamer over a batch: each step's ``[B]`` new tokens are decoded per row; text is emitted as
    soon as it is final (no half UTF-8 character, no possible start of a stop string)."""

    batched = True  # generate_batch accepts it for batches of any size

    def __init__(self, tokenizer: Any, jobs: list[Job], eos_ids: set[int]) -> None:
        self.tokenizer = tokenizer
        self.jobs = jobs
        self.eos_ids = eos_ids

    def put(self, value: torch.Tensor) -> None:
        if value.dim() != 1:  # the prompt (an empty [B, 0] when generating from embeddings)
            return
        for job, token in zip(self.jobs, value.tolist()):
            if job.done:
                continue
            job.generated += 1
            if token in self.eos_ids:
                self._finish(job, "stop", decode=True)
                continue
            job.ids.append(int(token))
            self._advance(job)
            if not job.done and job.generated >= job.max_tokens:
                self._finish(job, "length", decode=True)

    def end(self) -> None:
        for job in self.jobs:
            if not job.done:
                self._finish(job, "length", decode=True)

    def _advance(self, job: Job) -> None:
        text = self.tokenizer.decode(job.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return  # a character split across tokens: wait for the rest
        job.text = text
        for s in job.stop:
            at = text.find(s)
            if at >= 0:
                job.text = text[:at]
                self._finish(job, "stop")
                return
        hold = max((k for s in job.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        self._send(job, len(text) - hold)

    def _send(self, job: Job, upto: int) -> None:
        if upto > job.sent:
            job.emit("delta", job.text[job.sent:upto])
            job.sent = upto

    def _finish(self, job: Job, reason: str, *, decode: bool = False) -> None:
        """End the row; ``decode``: take the whole text (what was held back for a split character or a possible stop
        string is final now)."""
        job.done = True
        job.finish_reason = reason
        if decode:
            job.text = self.tokenizer.decode(job.ids, skip_special_tokens=True)
        self._send(job, len(job.text))


class RowsDone:
    """Stopping criterion: row i is done when its answer is (or its client is gone)."""

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs

    def __call__(self, input_ids: torch.Tensor, scores: Any = None, **kwargs: Any) -> torch.Tensor:
        done = [job.done or job.cancelled.is_set() for job in self.jobs]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class Batcher:
    """The queue and the worker thread that owns the model."""

    def __init__(self, model: Any, *, max_batch_size: int = 16, batch_wait_s: float = 0.005, max_queue: int = 256,
                 tokenizer_lock: threading.Lock | None = None, idle_release_s: float = 1.0) -> None:
        self.model = model
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.max_queue = max_queue
        self.idle_release_s = idle_release_s  # free heap pages go back to the system after this long without work
        self.releases = 0  # times they did
        self.lock = tokenizer_lock or threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.batches = 0  # generate calls made
        self.rows = 0  # rows answered
        self.eos_ids = _eos_ids(model)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="xmm-serve-batcher", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def submit(self, job: Job) -> None:
        if self._queue.qsize() >= self.max_queue:
            raise APIError(429, f"the server has {self.max_queue} requests waiting; retry later",
                           type="rate_limit_error", code="server_busy", headers={"Retry-After": "1"})
        self._queue.put(job)

    # -- worker ---------------------------------------------------------------------------------------------------
    def _run(self) -> None:
        worked = False  # since the last release of free memory
        while True:
            try:
                first = self._queue.get(timeout=self.idle_release_s) if worked else self._queue.get()
            except queue.Empty:  # idle: what the last batches freed need not stay resident
                release_free_memory()
                self.releases += 1
                worked = False
                continue
            if first is None:
                return
            worked = True
            jobs = [first]
            deadline = time.monotonic() + self.batch_wait_s
            stop = False
            while len(jobs) < self.max_batch_size * 4:
                timeout = deadline - time.monotonic()
                try:
                    job = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                jobs.append(job)
            for group in self._groups([j for j in jobs if not j.cancelled.is_set()]):
                self._answer(group)
            for job in jobs:
                if job.cancelled.is_set() and not job.done:
                    job.done = True
            if stop:
                return

    def _groups(self, jobs: list[Job]) -> list[list[Job]]:
        """Batches of jobs with equal sampling keys whose longest prompt plus largest answer fit the context."""
        by_key: dict[tuple[Any, ...], list[Job]] = {}
        for job in jobs:
            by_key.setdefault(job.sampling.key(job.id), []).append(job)
        limit = self.model.max_length
        groups: list[list[Job]] = []
        for members in by_key.values():
            current: list[Job] = []
            for job in members:
                trial = [*current, job]
                fits = max(j.positions for j in trial) + max(j.max_tokens for j in trial) <= limit
                if current and (len(trial) > self.max_batch_size or not fits):
                    groups.append(current)
                    trial = [job]
                current = trial
            if current:
                groups.append(current)
        return groups

    def _answer(self, jobs: list[Job]) -> None:
        try:
            self._generate(jobs)
        except Exception as e:  # noqa: BLE001 - every failure is answered, none kills the worker
            started = [j for j in jobs if j.generated]
            if len(jobs) > 1 and not started:
                log.warning("a batch of %d failed (%s: %s); answering its requests one by one", len(jobs),
                            type(e).__name__, e)
                for job in jobs:
                    self._answer([job])
                return
            error = from_xmm_error(e) if isinstance(e, XmmError) else internal_error()
            if not isinstance(e, XmmError):
                log.exception("generation failed")
            for job in jobs:
                job.done = True
                job.emit("error", error)

    def _generate(self, jobs: list[Job]) -> None:
        from xmm.model.generation import generate_batch, prepare

        max_new = max(j.max_tokens for j in jobs)
        with self.lock:
            batch, _ = prepare(self.model, [j.prompt.example() for j in jobs], max_new_tokens=max_new)
        streamer = RowStreamer(self.model.tokenizer, jobs, self.eos_ids)
        s = jobs[0].sampling
        from transformers import StoppingCriteriaList

        result = generate_batch(self.model, batch, max_new_tokens=max_new, do_sample=s.do_sample,
                                temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, seed=s.seed,
                                streamer=streamer, stopping_criteria=StoppingCriteriaList([RowsDone(jobs)]))
        streamer.end()
        self.batches += 1
        self.rows += len(jobs)
        outputs = result.all_outputs or [{} for _ in jobs]
        for i, job in enumerate(jobs):
            parts = output_parts(outputs[i]) if i < len(outputs) else []
            job.emit("done", Result(job.text, job.finish_reason, int(result.prompt_lengths[i]), job.generated, parts))


def _eos_ids(model: Any) -> set[int]:
    ids: set[int] = set()
    for eos in (getattr(model.llm.generation_config, "eos_token_id", None), model.tokenizer.eos_token_id):
        if eos is None:
            continue
        ids.update(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
    return ids
