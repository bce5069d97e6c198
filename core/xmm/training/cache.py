"""On-disk cache of frozen-encoder features, shared by epochs, stages and runs.

Layout of a cache folder: immutable safetensors shards ``shard-<writer>.safetensors`` (one tensor per cached item,
``features [T, D]`` float32, plus ``<key>.mask`` when some tokens are padding) and, beside each, an index
``index-<writer>.json`` listing its keys. A shard is written first and its index second, each atomically, so a
reader (or a run killed mid-write) only ever sees complete shards. Every writer (process) writes shards under its
own unique name, so several processes can fill one cache at once without locks; a key written twice is harmless.

Each index also records the scope its shard was written in (run, stage, process rank, or an evaluation;
:meth:`FeatureCache.enter_scope`): in a training stage a process reads what earlier stages, other runs and ``xmm cache
build`` wrote, and of its own stage only its own writes, so what it reads never depends on the other processes'
timing or on where a run was interrupted and resumed.

The key of an item is ``sha256`` of its modality, the content hash of the raw input (file bytes) and the encoder's
fingerprint (id, revision, preprocessing config): change any of them and the old entries are simply never found.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from xmm.encoder import EncoderOutput
from xmm.io import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

FORMAT_VERSION = 1

# the attribute of a MediaItem that holds its cache key when a data loader worker already computed it
CACHE_KEY = "feature_cache_key"


def feature_key(modality: str, content_hash: str, encoder_fingerprint: dict[str, Any]) -> str:
    """Cache key of one media item under one encoder configuration."""
    payload = json.dumps(
        {"v": FORMAT_VERSION, "modality": modality, "content": content_hash, "encoder": encoder_fingerprint},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class FeatureCache:
    """Feature store over a folder. ``get``/``put`` single items; ``flush`` writes buffered items as one shard."""

    def __init__(self, root: str | os.PathLike[str], *, shard_items: int = 512, writer: str | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.shard_items = shard_items
        self.writer = writer or f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._where: dict[str, str] = {}  # key -> shard file name
        self._seen_indexes: set[str] = set()
        self._handles: dict[str, Any] = {}
        self._pending: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._shards_written = 0
        self._refreshed_at = 0.0
        self.scope: dict[str, Any] | None = None  # what new shards are tagged with (see enter_scope)
        self._own_shards: set[str] = set()
        self.hits = 0
        self.misses = 0
        self.refresh()

    # -- index ----------------------------------------------------------------------------------------
    def refresh(self) -> int:
        """Pick up shards written since the last look (by this or another process); returns keys added."""
        added = 0
        self._refreshed_at = time.monotonic()
        for idx in sorted(self.root.glob("index-*.json")):
            if idx.name in self._seen_indexes:
                continue
            try:
                meta = json.loads(idx.read_text())
            except (OSError, json.JSONDecodeError) as e:
                log.warning("feature cache: ignoring unreadable index %s: %s", idx, e)
                continue
            shard = meta.get("shard")
            if meta.get("version") != FORMAT_VERSION or not shard or not (self.root / shard).exists():
                continue
            self._seen_indexes.add(idx.name)
            written = meta.get("scope")
            if not self._serves(written):
                continue
            # an item several processes computed is read from this process's own copy when it has one (what it
            # used when it computed it), else from the first in name order: the same choice on every run
            own = self._own(written)
            for key in meta.get("keys", []):
                if key not in self._where:
                    added += 1
                elif not own or self._where[key] in self._own_shards:
                    continue
                self._where[key] = shard
            if own:
                self._own_shards.add(shard)
        return added

    # -- scopes: what a process may read, so that every process's view is the same on every run ---------------
    def enter_scope(self, scope: Mapping[str, Any] | None, *, barrier: Callable[[], None] | None = None) -> None:
        """Write what follows under ``scope`` (``{"run", "stage", "rank"}`` of a training stage, with ``"eval":
        True`` for an evaluation; None: untagged) and look at the folder again under its rule (:meth:`_serves`).
        Buffered items are written first; ``barrier`` (every process calls it) runs between that and the look, so
        that every process sees what the others wrote before."""
        self.flush()
        if barrier is not None:
            barrier()
        self.scope = dict(scope) if scope else None
        self._where.clear()
        self._own_shards.clear()
        self._seen_indexes.clear()
        self.refresh()

    @contextmanager
    def evaluation(self) -> Iterator[None]:
        """An evaluation inside the current scope: what it computes is kept but never served to a training stage
        (whether it was computed depends on when the run was interrupted, so it would change the bits of a resumed
        run)."""
        saved = self.scope
        self.enter_scope({**(saved or {}), "eval": True})
        try:
            yield
        finally:
            self.enter_scope(saved)

    def _own(self, written: Mapping[str, Any] | None) -> bool:
        current = self.scope
        return bool(current and written and not written.get("eval") and written.get("run") == current.get("run")
                    and written.get("rank") == current.get("rank"))

    def _serves(self, written: Mapping[str, Any] | None) -> bool:
        """Whether a shard written under scope ``written`` is read in the current scope. A training stage reads
        untagged shards (``xmm cache build``) and those of other stages, never an evaluation's, and of its own
        stage only its own process's (a process computes each item it meets itself, in its own batch, so its
        features do not depend on how fast the other processes were or whether the run was resumed)."""
        current = self.scope
        if current is None or current.get("eval") or written is None:
            return True
        if written.get("eval"):
            return False
        same_stage = written.get("run") == current.get("run") and written.get("stage") == current.get("stage")
        return not same_stage or written.get("rank") == current.get("rank")

    def __contains__(self, key: str) -> bool:
        return key in self._pending or key in self._where

    def has(self, key: str, *, refresh_after: float = 5.0) -> bool:
        """``key in self``, looking for shards written since (by another process) when the last look is older than
        ``refresh_after`` seconds: a data loader worker's copy of the index then follows the training process's."""
        if key in self:
            return True
        now = time.monotonic()
        if now - self._refreshed_at < refresh_after:
            return False
        self.refresh()
        return key in self

    def __len__(self) -> int:
        return len(set(self._where) | set(self._pending))

    # -- read/write ------------------------------------------------------------------------------------
    def get(self, key: str) -> EncoderOutput | None:
        """The cached features of ``key`` as ``EncoderOutput`` (``[1, T, D]`` float32, CPU) or None."""
        if key in self._pending:
            feats, mask = self._pending[key]
        elif key in self._where:
            handle = self._handle(self._where[key])
            feats = handle.get_tensor(key)
            mask = handle.get_tensor(f"{key}.mask") if f"{key}.mask" in self._keys_of(handle) else None
        else:
            self.misses += 1
            return None
        self.hits += 1
        if mask is None:
            mask = torch.ones(feats.shape[0], dtype=torch.bool)
        return EncoderOutput(feats.unsqueeze(0), mask.unsqueeze(0))

    def put(self, key: str, output: EncoderOutput) -> EncoderOutput:
        """Store one item's features (``[1, T, D]``); returns them as they will be read back (float32, CPU)."""
        feats = output.features[0].detach().to("cpu", torch.float32).contiguous()
        mask = output.mask[0].detach().to("cpu").bool().contiguous()
        self._pending[key] = (feats, None if bool(mask.all()) else mask)
        if len(self._pending) >= self.shard_items:
            self.flush()
        return EncoderOutput(feats.unsqueeze(0), mask.unsqueeze(0))

    def flush(self) -> Path | None:
        """Write buffered items as a new shard + index (atomically); returns the shard path."""
        if not self._pending:
            return None
        from safetensors.torch import save_file

        name = f"{self.writer}-{self._shards_written:05d}"
        shard = f"shard-{name}.safetensors"
        tensors: dict[str, torch.Tensor] = {}
        for key, (feats, mask) in self._pending.items():
            tensors[key] = feats
            if mask is not None:
                tensors[f"{key}.mask"] = mask
        atomic_write(self.root / shard, lambda p: save_file(tensors, str(p), metadata={"xmm_feature_cache": str(FORMAT_VERSION)}))
        index = {"version": FORMAT_VERSION, "shard": shard, "keys": sorted(self._pending), "scope": self.scope}
        atomic_write_text(self.root / f"index-{name}.json", json.dumps(index) + "\n")
        for key in self._pending:
            self._where[key] = shard
        self._own_shards.add(shard)
        self._seen_indexes.add(f"index-{name}.json")
        self._shards_written += 1
        self._pending.clear()
        return self.root / shard

    def close(self) -> None:
        self.flush()
        self._handles.clear()

    def _handle(self, shard: str) -> Any:
        if shard not in self._handles:
            from safetensors import safe_open

            self._handles[shard] = safe_open(str(self.root / shard), framework="pt")
        return self._handles[shard]

    @staticmethod
    def _keys_of(handle: Any) -> set[str]:
        keys = getattr(handle, "_xmm_keys", None)
        if keys is None:
            keys = set(handle.keys())
            try:
                handle._xmm_keys = keys
            except AttributeError:  # a handle type without a __dict__: recompute each time
                pass
        return keys


class CachedFeatureProvider:
    """``model.feature_provider``: serve frozen-encoder features from a :class:`FeatureCache`, compute misses.

    ``compute(items) -> list[EncoderOutput]`` is the model's own (uncached) encoding. Items whose encoder is being
    trained (any parameter with ``requires_grad``, or not ``frozen``) always bypass the cache. Hits and misses alike
    return the cached representation (float32), so a run gives the same numbers whether an item was cached or not.
    """

    def __init__(self, model: Any, cache: FeatureCache, compute: Callable[[Sequence[Any]], list[EncoderOutput]], *,
                 resident_bytes: int | None = None) -> None:
        self.model = model
        self.cache = cache
        self.compute = compute
        self._fingerprints: dict[str, dict[str, Any]] = {}
        self._cacheable: dict[str, bool] = {}
        self._content_hashes: dict[tuple[Any, ...], str] = {}
        # features already on the model's device, by key, up to a budget: a stage's epochs after the first read
        # none from disk and copy none to the device
        self.resident_bytes = resident_bytes
        self._resident: dict[str, EncoderOutput] = {}
        self._resident_used = 0

    def reset(self) -> None:
        """Forget which encoders are frozen and their fingerprints (call when a stage changes what is trained:
        a trainable encoder's fingerprint hashes its weights, which the previous stage may have changed)."""
        self._cacheable.clear()
        self._fingerprints.clear()

    def warm(self) -> None:
        """Decide, in this process, which encoders are cached and their fingerprints (hashing a trained encoder's
        weights reads its device): data loader workers forked afterwards inherit the answers and never touch a GPU."""
        for modality in list(self.model.encoders):
            if self.cacheable(modality):
                self._fingerprint(modality)

    def cacheable(self, modality: str) -> bool:
        """True when ``modality``'s encoder is frozen (no parameter with ``requires_grad``); memoised per stage."""
        if modality not in self._cacheable:
            enc = self.model.encoders[modality] if modality in self.model.encoders else None
            self._cacheable[modality] = enc is not None and bool(getattr(enc, "frozen", True)) and not any(
                p.requires_grad for p in enc.parameters()
            )
        return self._cacheable[modality]

    def key(self, item: Any) -> str:
        """The cache key of ``item`` (the one a data loader worker put on it, else computed)."""
        known = getattr(item, CACHE_KEY, None)
        if known is not None:
            return known
        return feature_key(item.modality, self._content_hash(item), self._fingerprint(item.modality))

    def _fingerprint(self, modality: str) -> dict[str, Any]:
        fp = self._fingerprints.get(modality)
        if fp is None:
            enc = self.model.encoders[modality]
            fp = enc.fingerprint() if hasattr(enc, "fingerprint") else {"id": type(enc).__name__}
            self._fingerprints[modality] = fp
        return fp

    def _content_hash(self, item: Any) -> str:
        """``item.content_hash()``, remembered across epochs for files: a media file is read and hashed once per
        process while its size, modification time and inode stay the same (every epoch builds new items, and
        hashing a large video or audio file each time would cost as much as reading it)."""
        src = getattr(item, "source", None)
        if not isinstance(src, (str, os.PathLike)):
            return item.content_hash()
        try:
            st = os.stat(src)
        except OSError:
            return item.content_hash()  # raises the MediaError that names the file
        sig = (item.modality, os.fspath(src), st.st_size, st.st_mtime_ns, st.st_ino)
        digest = self._content_hashes.get(sig)
        if digest is None:
            digest = self._content_hashes[sig] = item.content_hash()
        return digest

    def is_hit(self, item: Any) -> bool:
        """True when ``item`` will be served from the cache (its media then need no decoding)."""
        return self.cacheable(item.modality) and self.cache.has(self.key(item))

    def __call__(self, items: Sequence[Any]) -> list[EncoderOutput]:
        device = _device_of(self.model)
        out: list[EncoderOutput | None] = [None] * len(items)
        todo: list[int] = []
        for i, item in enumerate(items):
            if self.cacheable(item.modality):
                key = self.key(item)
                hit = self._resident.get(key)
                if hit is None:
                    hit = self.cache.get(key)
                    if hit is not None:
                        hit = self._keep(key, hit, device)
                else:
                    self.cache.hits += 1
                if hit is not None:
                    out[i] = hit
                    continue
            todo.append(i)
        if todo:
            computed = self.compute([items[i] for i in todo])
            for i, enc in zip(todo, computed):
                item = items[i]
                if self.cacheable(item.modality):
                    key = self.key(item)
                    out[i] = self._keep(key, self.cache.put(key, enc), device)
                else:
                    out[i] = enc
        return [o if o.features.device == device else  # type: ignore[union-attr]
                EncoderOutput(o.features.to(device, non_blocking=True), o.mask.to(device, non_blocking=True))  # type: ignore[union-attr]
                for o in out]

    def _keep(self, key: str, output: EncoderOutput, device: torch.device) -> EncoderOutput:
        """``output`` on ``device``, kept there for the next request of ``key`` while the budget allows."""
        if self.resident_bytes is None:
            self.resident_bytes = resident_budget(device)
        budget = self.resident_bytes
        size = output.features.numel() * output.features.element_size() + output.mask.numel()
        if self._resident_used + size > budget:
            return output
        kept = EncoderOutput(output.features.to(device), output.mask.to(device))
        self._resident[key] = kept
        self._resident_used += size
        return kept

    def release(self) -> None:
        """Drop the features kept on the device."""
        self._resident.clear()
        self._resident_used = 0


def resident_budget(device: torch.device) -> int:
    """Bytes of features a provider keeps on ``device``: a quarter of a CUDA device's free memory, else 1 GiB of
    host (or unified) memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free) // 4
    return 1 << 30


def _device_of(model: Any) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
