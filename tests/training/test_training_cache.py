"""The feature cache: keys, atomic shards, reuse across instances and processes, the model seam."""

from __future__ import annotations

from pathlib import Path

import torch
from xmm.encoder import EncoderOutput
from xmm.training.cache import CachedFeatureProvider, FeatureCache, feature_key
from xmm.training.data import BadSamples, ManifestDataset


def _out(t: int = 3, d: int = 4, pad: int = 0) -> EncoderOutput:
    mask = torch.ones(1, t, dtype=torch.bool)
    if pad:
        mask[0, -pad:] = False
    return EncoderOutput(torch.randn(1, t, d), mask)


def test_key_depends_on_content_encoder_and_preprocessing() -> None:
    fp = {"id": "enc", "revision": "1", "preprocess": {"size": 224}}
    k = feature_key("image", "abc", fp)
    assert k == feature_key("image", "abc", dict(fp))
    assert k != feature_key("image", "abd", fp)
    assert k != feature_key("image", "abc", {**fp, "revision": "2"})
    assert k != feature_key("image", "abc", {**fp, "preprocess": {"size": 256}})
    assert k != feature_key("video", "abc", fp)


def test_put_flush_and_reuse(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, shard_items=2)
    a, b, c = _out(), _out(pad=1), _out(t=5)
    got = cache.put("a", a)
    assert torch.equal(got.features, a.features) and got.features.dtype == torch.float32
    cache.put("b", b)  # second item: a shard is written
    cache.put("c", c)  # pending
    assert len(list(tmp_path.glob("shard-*.safetensors"))) == 1
    assert torch.equal(cache.get("c").features, c.features)  # served from the buffer
    cache.close()
    again = FeatureCache(tmp_path)
    assert len(again) == 3
    assert torch.equal(again.get("b").mask, b.mask) and torch.equal(again.get("b").features, b.features)
    assert again.get("missing") is None and again.misses == 1


def test_two_writers_share_a_folder_and_half_written_shards_are_ignored(tmp_path: Path) -> None:
    w1, w2 = FeatureCache(tmp_path), FeatureCache(tmp_path)
    w1.put("x", _out())
    w2.put("y", _out())
    w1.flush()
    w2.flush()
    assert "y" not in w1
    assert w1.refresh() == 1 and "y" in w1
    assert w2.refresh() == 1 and "x" in w2
    # a shard whose index never got written (killed between the two renames) is invisible
    (tmp_path / "shard-dead-00000.safetensors").write_bytes(b"partial")
    (tmp_path / "index-zz.json").write_text("{not json")
    fresh = FeatureCache(tmp_path)
    assert set(fresh._where) == {"x", "y"}


def test_provider_serves_hits_and_bypasses_trained_encoders(tmp_path: Path, tiny_model, write_task) -> None:
    from xmm_tiny_training_plugin import VecEncoder

    path = write_task(tmp_path / "task", 4)
    ds = ManifestDataset.from_manifests([path], tiny_model.specs, BadSamples())
    batch = tiny_model.collator(load_media=False)([ds[i] for i in range(4)])
    provider = CachedFeatureProvider(tiny_model, FeatureCache(tmp_path / "cache"), compute=tiny_model.encode_media)
    assert not provider.is_hit(batch.media[0])
    for it in batch.media:
        it.load()
    before = VecEncoder.calls
    first = provider(batch.media)
    assert VecEncoder.calls == before + 4
    assert all(provider.is_hit(it) for it in batch.media)
    second = provider(batch.media)
    assert VecEncoder.calls == before + 4  # all hits: the encoder did not run
    assert all(torch.equal(x.features, y.features) for x, y in zip(first, second))
    plain = tiny_model.encode_media(batch.media)
    assert torch.allclose(plain[0].features, first[0].features)
    # through the model seam
    tiny_model.feature_provider = provider
    tiny_model.eval()
    with torch.no_grad():
        tiny_model(batch)
    assert VecEncoder.calls == before + 4 + 4  # only the direct encode_media call above ran the encoder
    # an encoder that is being trained never uses the cache
    tiny_model.encoders["vec"].unfreeze()
    provider.reset()  # what the loop does when a stage starts
    assert not provider.cacheable("vec") and not provider.is_hit(batch.media[0])
    tiny_model.encoders["vec"].freeze()


def test_trainable_encoder_key_follows_its_weights() -> None:
    """An encoder trained from scratch has no pinned revision: features cached after one training run must not be
    served to a model whose encoder weights differ (a rerun, another seed), so its fingerprint hashes the weights."""
    from xmm_tiny_training_plugin import TrainableVecEncoder, VecEncoder

    enc = TrainableVecEncoder()
    before = enc.fingerprint()
    assert before == TrainableVecEncoder().fingerprint()  # same weights (fixed seed): same key, the cache still works
    with torch.no_grad():
        next(enc.parameters()).add_(1.0)
    after = enc.fingerprint()
    assert after["weights"] != before["weights"]
    assert feature_key("vec", "c", after) != feature_key("vec", "c", before)
    assert "weights" not in VecEncoder().fingerprint()  # pretrained encoders are identified by their revision


def test_provider_hashes_each_file_once_until_it_changes(tmp_path: Path, tiny_model, monkeypatch, write_task) -> None:
    """Every epoch collates new media items; the provider must not re-read and re-hash unchanged files each time."""
    import os

    path = write_task(tmp_path / "task", 2)
    ds = ManifestDataset.from_manifests([path], tiny_model.specs, BadSamples())
    collate = tiny_model.collator(load_media=False)
    provider = CachedFeatureProvider(tiny_model, FeatureCache(tmp_path / "cache"), compute=tiny_model.encode_media)
    spec = type(collate([ds[0]]).media[0].spec)
    calls = []
    real = spec.content_hash
    monkeypatch.setattr(spec, "content_hash", lambda self, raw: calls.append(raw) or real(self, raw))
    epoch1 = collate([ds[0], ds[1]]).media
    keys1 = [provider.key(it) for it in epoch1]
    assert len(calls) == 2
    epoch2 = collate([ds[0], ds[1]]).media  # new items, same files
    assert [provider.key(it) for it in epoch2] == keys1 and len(calls) == 2
    # a changed file is hashed again and gets another key
    src = Path(epoch2[0].source)
    data = src.read_bytes()
    src.write_bytes(data + b"\0")
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 1_000_000))
    changed = provider.key(collate([ds[0]]).media[0])
    assert len(calls) == 3 and changed != keys1[0]
