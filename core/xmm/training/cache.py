"""On-disk cache of frozen-encoder features, shared by epochs, stages and runs.

Layout of a cache folder: immutable safetensors shards ``shard-<writer>.safetensors`` (one tensor per cached item,
``features [T, D]`` float32, plus ``<key>.mask`` when some tokens are padding) and, beside each, an index
``index-<writer>.json`` listing its keys. A shard is written first and its index second, each atomically, so a
reader (or a run killed mid-write) only ever sees complete shards. Every writer (process) writes shards under its
own unique name, so several processes can fill one cache at once without locks; a key written twice is harmless.

The key of an item is ``sha256`` of its modality, the content hash of the raw input (file bytes) and the encoder's
fingerprint (id, revision, preprocessing config): change any of them and the old entries are simply never found.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from xmm.encoder import EncoderOutput
from xmm.io import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


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
        self.hits = 0
        self.misses = 0
        self.refresh()

    # -- index ----------------------------------------------------------------------------------------
    def refresh(self) -> int:
        """Pick up shards written since the last look (by this or another process); returns keys added."""
        added = 0
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
            for key in meta.get("keys", []):
                if key not in self._where:
                    self._where[key] = shard
                    added += 1
            self._seen_indexes.add(idx.name)
        return added

    def __contains__(self, key: str) -> bool:
        return key in self._pending or key in self._where

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
        index = {"version": FORMAT_VERSION, "shard": shard, "keys": sorted(self._pending)}
        atomic_write_text(self.root / f"index-{name}.json", json.dumps(index) + "\n")
        for key in self._pending:
            self._where[key] = shard
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

    def __init__(self, model: Any, cache: FeatureCache, compute: Callable[[Sequence[Any]], list[EncoderOutput]]) -> None:
        self.model = model
        self.cache = cache
        self.compute = compute
        self._fingerprints: dict[str, dict[str, Any]] = {}
        self._cacheable: dict[str, bool] = {}
        self._content_hashes: dict[tuple[Any, ...], str] = {}

    def reset(self) -> None:
        """Forget which encoders are frozen and their fingerprints (call when a stage changes what is trained:
        a trainable encoder's fingerprint hashes its weights, which the previous stage may have changed)."""
        self._cacheable.clear()
        self._fingerprints.clear()

    def cacheable(self, modality: str) -> bool:
        """True when ``modality``'s encoder is frozen (no parameter with ``requires_grad``); memoised per stage."""
        if modality not in self._cacheable:
            enc = self.model.encoders[modality] if modality in self.model.encoders else None
            self._cacheable[modality] = enc is not None and bool(getattr(enc, "frozen", True)) and not any(
                p.requires_grad for p in enc.parameters()
            )
        return self._cacheable[modality]

    def key(self, item: Any) -> str:
        fp = self._fingerprints.get(item.modality)
        if fp is None:
            enc = self.model.encoders[item.modality]
            fp = enc.fingerprint() if hasattr(enc, "fingerprint") else {"id": type(enc).__name__}
            self._fingerprints[item.modality] = fp
        return feature_key(item.modality, self._content_hash(item), fp)

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
        return self.cacheable(item.modality) and self.key(item) in self.cache

    def __call__(self, items: Sequence[Any]) -> list[EncoderOutput]:
        out: list[EncoderOutput | None] = [None] * len(items)
        todo: list[int] = []
        for i, item in enumerate(items):
            if self.cacheable(item.modality):
                hit = self.cache.get(self.key(item))
                if hit is not None:
                    out[i] = hit
                    continue
            todo.append(i)
        if todo:
            computed = self.compute([items[i] for i in todo])
            for i, enc in zip(todo, computed):
                item = items[i]
                out[i] = self.cache.put(self.key(item), enc) if self.cacheable(item.modality) else enc
        device = _device_of(self.model)
        return [o.__class__(o.features.to(device), o.mask.to(device)) for o in out]  # type: ignore[union-attr]


def _device_of(model: Any) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
