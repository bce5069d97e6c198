"""Tiny randomly initialised transformers audio models with their feature extractors, for tests (offline, fast)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

KINDS = ("ast", "wav2vec2", "hubert", "whisper", "clap")


def save_tiny_audio_model(kind: str, directory: str | Path, *, seed: int = 0) -> Path:
    """Save a tiny ``kind`` model (one of :data:`KINDS`) and its feature extractor to ``directory``; returns it."""
    import torch
    import transformers as tf

    directory = Path(directory)
    torch.manual_seed(seed)
    small: dict[str, Any] = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    if kind == "ast":
        config = tf.ASTConfig(**small, max_length=128, num_mel_bins=128, frequency_stride=16, time_stride=16)
        fe = tf.ASTFeatureExtractor(max_length=128, num_mel_bins=128)
        model = tf.ASTModel(config)
    elif kind in ("wav2vec2", "hubert"):
        conv = {"conv_dim": (16, 16), "conv_stride": (5, 4), "conv_kernel": (10, 4), "num_conv_pos_embeddings": 16,
                "num_conv_pos_embedding_groups": 2, "feat_extract_norm": "layer", "do_stable_layer_norm": True}
        if kind == "wav2vec2":
            config, model_cls = tf.Wav2Vec2Config(**small, **conv), tf.Wav2Vec2Model
        else:
            config, model_cls = tf.HubertConfig(**small, **conv), tf.HubertModel
        fe = tf.Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True, do_normalize=True)
        model = model_cls(config)
    elif kind == "whisper":
        config = tf.WhisperConfig(
            d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80, vocab_size=128, max_source_positions=1500,
            max_target_positions=32, decoder_start_token_id=1, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        )
        fe = tf.WhisperFeatureExtractor(feature_size=80)
        model = tf.WhisperForConditionalGeneration(config)
    elif kind == "clap":
        audio = {"patch_embeds_hidden_size": 16, "depths": [1, 1], "num_attention_heads": [2, 2], "hidden_size": 32,
                 "window_size": 4, "spec_size": 128, "num_mel_bins": 64, "patch_stride": [4, 4], "patch_size": 4,
                 "projection_dim": 16}
        text = {"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                "intermediate_size": 32, "projection_dim": 16}
        config = tf.ClapConfig(text_config=text, audio_config=audio, projection_dim=16)
        fe = tf.ClapFeatureExtractor(feature_size=64, sampling_rate=48000, max_length_s=1, fft_window_size=1024, truncation="rand_trunc",
                                     hop_length=480)
        model = tf.ClapModel(config)
    else:
        raise ValueError(f"unknown tiny model kind {kind!r}; known: {KINDS}")
    model.save_pretrained(directory)
    fe.save_pretrained(directory)
    return directory
