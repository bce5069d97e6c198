"""The diffusers adapter on tiny pipelines built from configs (offline): Stable Diffusion, AudioLDM, TextToVideoSD."""

from __future__ import annotations

import wave

import numpy as np
import pytest
import torch
from PIL import Image
from xmm.decoders.diffusion import DiffusersDecoder
from xmm.errors import ConfigError, ModelNotFoundError, ShapeError


def test_condition_shape_and_text_condition_match_the_pipeline(tiny_sd, image_decoder):
    assert image_decoder.modality == "image" and image_decoder.input_kind == "conditioning"
    # the tiny CLIP: 16 positions of width 32 (SD proper: 77 x 768/1024)
    assert image_decoder.condition_shape == (16, 32)
    emb = image_decoder.text_condition(["a red circle", "a blue square"])
    ref, _ = tiny_sd.encode_prompt(["a red circle", "a blue square"], "cpu", 1, False)
    torch.testing.assert_close(emb, ref)
    assert not torch.allclose(emb[0], emb[1])


def test_generates_one_image_per_item_and_conditioning_matters(image_decoder):
    torch.manual_seed(1)
    cond = torch.randn(2, 16, 32)
    out = image_decoder(cond)
    assert out.modality == "image" and len(out.outputs) == 2
    assert all(isinstance(im, Image.Image) and im.size == (32, 32) for im in out.outputs)
    # seeded sampling: the same conditioning gives the same image, another conditioning another one
    again = image_decoder(cond[:1])
    np.testing.assert_array_equal(np.asarray(again.outputs[0]), np.asarray(out.outputs[0]))
    other = image_decoder(cond[:1] * -3.0)
    assert np.abs(np.asarray(other.outputs[0], dtype=int) - np.asarray(out.outputs[0], dtype=int)).max() > 0


def test_prompt_embeds_path_equals_prompt_path(tiny_sd, image_decoder):
    """Feeding the text encoder's own embedding as conditioning reproduces generation from the prompt text."""
    cond = image_decoder.text_condition(["a red circle"])
    ours = image_decoder(cond).outputs[0]
    ref = tiny_sd("a red circle", num_inference_steps=2, guidance_scale=2.0, generator=torch.Generator().manual_seed(0)).images[0]
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))


def test_negative_zeros_differs_from_unconditional(tiny_sd, image_decoder):
    cond = torch.randn(1, 16, 32)
    a = image_decoder(cond).outputs[0]
    b = DiffusersDecoder(tiny_sd, num_inference_steps=2, guidance_scale=2.0, negative="zeros").forward(cond).outputs[0]
    assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() > 0


def test_shape_errors(image_decoder):
    with pytest.raises(ShapeError, match=r"\[B, 16, 32\]"):
        image_decoder(torch.randn(1, 77, 32))
    with pytest.raises(ShapeError, match="needs conditioning"):
        image_decoder(None)


def test_save_output_writes_png(image_decoder, tmp_path):
    out = image_decoder(torch.randn(1, 16, 32))
    path = image_decoder.save_output(out.outputs[0], tmp_path / "img")
    assert path == tmp_path / "img.png"
    with Image.open(path) as im:
        assert im.size == (32, 32)


def test_loads_a_local_pipeline_folder_and_the_registry_builds_it(tiny_sd, tmp_path, fresh_registry):
    tiny_sd.save_pretrained(tmp_path / "pipe")
    dec = fresh_registry.create_decoder("diffusers", pipeline=str(tmp_path / "pipe"), num_inference_steps=2)
    assert isinstance(dec, DiffusersDecoder) and dec.condition_shape == (16, 32)
    assert dec.describe()["pipeline"] == str(tmp_path / "pipe")
    assert dec.rebuild_config() == {"pipeline": str(tmp_path / "pipe"), "num_inference_steps": 2}
    assert DiffusersDecoder(tiny_sd).rebuild_config() is None
    torch.testing.assert_close(dec.text_condition(["x"]), DiffusersDecoder(tiny_sd).text_condition(["x"]))
    assert fresh_registry.owner("decoders", "diffusers") == "xmm-core"


def test_bad_configs(tiny_sd, tmp_path):
    with pytest.raises(ModelNotFoundError, match="model_index.json"):
        DiffusersDecoder(pipeline=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError) as e:
        DiffusersDecoder(tiny_sd, num_inference_steps=0)
    assert e.value.field == "num_inference_steps"
    with pytest.raises(ConfigError) as e:
        DiffusersDecoder(tiny_sd, negative="nothing")
    assert e.value.field == "negative"
    with pytest.raises(ConfigError, match="expected a diffusers pipeline"):
        DiffusersDecoder(pipeline=object())


def test_unconditional_pipeline_is_refused():
    import diffusers

    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), norm_num_groups=8,
                                 down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, layers_per_block=1)
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler())
    with pytest.raises(ConfigError, match="prompt_embeds"):
        DiffusersDecoder(pipe)


def test_pipeline_is_frozen_and_outside_the_state_dict():
    from xmm.decoders.tiny import tiny_stable_diffusion

    image_decoder = DiffusersDecoder(tiny_stable_diffusion(hidden=16, image_size=16))  # its own: it is cast below
    assert image_decoder.state_dict() == {}
    assert list(image_decoder.parameters()) == []
    assert image_decoder.num_parameters() > 0
    assert not any(p.requires_grad for m in image_decoder._modules_of_pipeline() for p in m.parameters())
    image_decoder.train()
    assert not image_decoder.pipeline.unet.training
    image_decoder.to(torch.float64)  # .to() on the decoder reaches the pipeline's modules
    assert image_decoder.pipeline.unet.dtype == torch.float64
    assert image_decoder.text_condition(["x"]).dtype == torch.float64


def test_audioldm_generates_a_wav(tmp_path):
    """AudioLDM's conditioning is one CLAP vector: condition_shape (1, D); prompt_embeds are passed as [B, D]."""
    from xmm.decoders.tiny import tiny_audioldm

    pipe = tiny_audioldm()
    dec = DiffusersDecoder(pipe, num_inference_steps=2, guidance_scale=2.0, call_kwargs={"audio_length_in_s": 0.256})
    assert dec.modality == "audio" and dec.condition_shape == (1, 16)
    emb = dec.text_condition(["a dog barks"])
    ref = pipe._encode_prompt(["a dog barks"], "cpu", 1, False)
    torch.testing.assert_close(emb[:, 0], ref)
    out = dec(torch.randn(2, 1, 16))
    assert len(out.outputs) == 2 and out.info["sampling_rate"] == 16000
    wav = out.outputs[0]
    assert wav.ndim == 1 and wav.size > 0
    path = dec.save_output(wav, tmp_path / "sound")
    with wave.open(str(path)) as w:
        assert path.suffix == ".wav" and w.getframerate() == 16000 and w.getnframes() == wav.size


def test_text_to_video_generates_frames(tmp_path):
    """Zeroscope's pipeline class (TextToVideoSD) with a tiny 3-D UNet: frames [F, H, W, C] -> a video file."""
    from xmm.decoders.tiny import tiny_text_to_video

    dec = DiffusersDecoder(tiny_text_to_video(), num_inference_steps=2, guidance_scale=2.0, call_kwargs={"num_frames": 3})
    assert dec.modality == "video" and dec.condition_shape == (16, 32)
    out = dec(torch.randn(1, 16, 32))
    frames = out.outputs[0]
    assert np.asarray(frames).shape == (3, 32, 32, 3)
    path = dec.save_output(frames, tmp_path / "clip")
    assert path.suffix in {".mp4", ".gif"} and path.stat().st_size > 0


def test_missing_diffusers_names_the_extra(monkeypatch, tmp_path):
    import sys

    from xmm.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError
    with pytest.raises(MissingDependencyError, match=r"xmm-core\[diffusers\]"):
        DiffusersDecoder(pipeline=str(tmp_path))
