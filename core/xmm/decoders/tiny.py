"""Tiny, randomly initialised diffusers pipelines built from configs (offline): for tests, examples and the demo.

They have the real architecture of Stable Diffusion, AudioLDM and Zeroscope (TextToVideoSD) at toy widths, so the
adapter, the alignment loss and end-to-end generation can be exercised in seconds; their outputs are noise-like.
"""

from __future__ import annotations

from typing import Any

import torch

from xmm.decoders.diffusion import _require_diffusers


def _char_vocab(specials: list[str]) -> dict[str, int]:
    """A byte-level character vocabulary (each byte alone and as an end of word) after ``specials``."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(specials)}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    for c in chars:
        vocab.setdefault(c + "</w>", len(vocab))
    return vocab


def tiny_clip_text(max_length: int = 16, hidden: int = 32, seed: int = 0) -> tuple[Any, Any]:
    """A character-level CLIP tokenizer (no files needed) and a 2-layer ``CLIPTextModel`` of width ``hidden``."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = _char_vocab(["<|startoftext|>", "<|endoftext|>"])
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=max_length, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    return tokenizer, CLIPTextModel(config)


def _ddim() -> Any:
    diffusers = _require_diffusers()
    return diffusers.DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1,
    )


def tiny_stable_diffusion(*, max_length: int = 16, hidden: int = 32, image_size: int = 32, seed: int = 0) -> Any:
    """A ``StableDiffusionPipeline`` with a tiny UNet, VAE and CLIP text encoder: conditioning ``[max_length, hidden]``,
    images of ``image_size`` px (latents at 1/4 size)."""
    diffusers = _require_diffusers()
    tokenizer, text_encoder = tiny_clip_text(max_length, hidden, seed)
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(
        sample_size=image_size // 4, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=hidden, attention_head_dim=8, norm_num_groups=8,
    )
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 16, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3, sample_size=image_size,
    )
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=_ddim(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_text_to_video(*, max_length: int = 16, hidden: int = 32, frame_size: int = 32, seed: int = 0) -> Any:
    """A ``TextToVideoSDPipeline`` (Zeroscope's architecture) with a tiny 3-D UNet, VAE and CLIP text encoder."""
    diffusers = _require_diffusers()
    tokenizer, text_encoder = tiny_clip_text(max_length, hidden, seed)
    torch.manual_seed(seed)
    unet = diffusers.UNet3DConditionModel(
        sample_size=frame_size // 4, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=hidden, attention_head_dim=8, norm_num_groups=8,
    )
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 16, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3, sample_size=frame_size,
    )
    pipe = diffusers.TextToVideoSDPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=_ddim())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_audioldm(*, max_length: int = 16, hidden: int = 16, projection_dim: int = 16, seed: int = 0) -> Any:
    """An ``AudioLDMPipeline`` with a tiny CLAP text encoder (conditioning ``[1, projection_dim]``), UNet, mel VAE and
    HiFi-GAN vocoder (16 kHz)."""
    diffusers = _require_diffusers()
    from transformers import (
        ClapTextConfig,
        ClapTextModelWithProjection,
        RobertaTokenizer,
        SpeechT5HifiGan,
        SpeechT5HifiGanConfig,
    )

    vocab = _char_vocab(["<s>", "<pad>", "</s>", "<unk>"])
    tokenizer = RobertaTokenizer(vocab=vocab, merges=[], model_max_length=max_length)
    torch.manual_seed(seed)
    text_encoder = ClapTextModelWithProjection(ClapTextConfig(
        vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=2,
        num_hidden_layers=1, max_position_embeddings=max_length + 4, projection_dim=projection_dim,
        bos_token_id=0, pad_token_id=1, eos_token_id=2,
    ))
    unet = diffusers.UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=(16, 32), norm_num_groups=8, class_embed_type="simple_projection",
        projection_class_embeddings_input_dim=projection_dim, class_embeddings_concat=True,
    )
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 16), in_channels=1, out_channels=1, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    )
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=8, sampling_rate=16000, upsample_initial_channel=16, upsample_rates=[2, 2],
        upsample_kernel_sizes=[4, 4], resblock_kernel_sizes=[3, 7], resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]],
        normalize_before=False,
    ))
    pipe = diffusers.AudioLDMPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                      scheduler=_ddim(), vocoder=vocoder)
    pipe.set_progress_bar_config(disable=True)
    return pipe
