"""The three image encoders: real EfficientNet-Lite0 weights, timm backbones and transformers vision models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from xmm.encoder import EncoderOutput
from xmm.errors import CheckpointError, ConfigError, MediaError, ModelNotFoundError
from xmm_plugin_image.encoders import create_image_encoder
from xmm_plugin_image.encoders.efficientnet import PINNED_SHA256
from xmm_plugin_image.loading import load_image

# ImageNet-1k classes: 281 tabby, 282 tiger cat, 283 Persian, 284 Siamese, 285 Egyptian cat; 967 espresso, 968 cup
CAT_CLASSES = set(range(281, 286))


# -- EfficientNet-Lite0 (the real, packaged weights) ---------------------------------------------------------------
def test_efficientnet_gives_49_tokens_of_width_1280(effnet, photos):
    assert effnet.revision == PINNED_SHA256
    assert effnet.output_dim == 1280 and effnet.id == "efficientnet-lite0"
    items = [load_image(photos[n]) for n in ("astronaut", "chelsea")]
    out = effnet.encode(items)
    assert isinstance(out, EncoderOutput)
    assert out.features.shape == (2, 49, 1280) and out.mask.all()
    assert not out.features.requires_grad
    assert torch.isfinite(out.features).all() and out.features.std() > 0.1


def test_efficientnet_weights_are_real_pretrained(effnet, photos):
    """Top-1 on real photos: the cat is a cat, the coffee is an espresso or a cup."""
    x = torch.stack([effnet.preprocess(load_image(photos[n]))["pixel_values"] for n in ("chelsea", "coffee")])
    probs = effnet.classify(x)
    top = probs.argmax(-1).tolist()
    assert top[0] in CAT_CLASSES, f"chelsea classified as {top[0]}"
    assert top[1] in (967, 968), f"coffee classified as {top[1]}"
    assert probs.max(-1).values.min() > 0.3


def test_efficientnet_is_frozen(effnet):
    assert effnet.frozen and not any(p.requires_grad for p in effnet.parameters())
    effnet.train()
    assert not effnet.training and not effnet.model.training  # BatchNorm statistics stay fixed


def test_resize_modes_keep_the_whole_image_when_padding(effnet, photos):
    wide = load_image(photos["rocket"])  # 640x427
    x = effnet.preprocess(wide)["pixel_values"]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    # "pad" fills the borders with the mean colour, which normalises to ~0; the middle rows hold the photo
    assert x[:, :30].abs().max() < 0.01 and x[:, 100:120].abs().mean() > 0.1
    for mode in ("squash", "center_crop"):
        enc = create_image_encoder("efficientnet-lite0", resize=mode)
        y = enc.preprocess(wide)["pixel_values"]
        assert y.shape == (3, 224, 224) and y[:, :30].abs().mean() > 0.1
        assert enc.preprocess_config()["resize"] == mode


def test_efficientnet_layers_and_pooling(photos):
    img = load_image(photos["coffee"])
    pen = create_image_encoder("efficientnet-lite0", layer="penultimate")
    assert pen.output_dim == 320 and pen.encode([img]).features.shape == (1, 49, 320)
    early = create_image_encoder("efficientnet-lite0", layer=2, image_size=64)
    assert early.output_dim == 24 and early.encode([img]).features.shape == (1, 16 * 16, 24)  # stride 4
    pooled = create_image_encoder("efficientnet-lite0", pool_grid=2, image_size=128)
    full = create_image_encoder("efficientnet-lite0", image_size=128)
    p, f = pooled.encode([img]).features, full.encode([img]).features
    assert p.shape == (1, 4, 1280) and f.shape == (1, 16, 1280)
    fmap = f.transpose(1, 2).reshape(1, 1280, 4, 4)  # tokens are the 4x4 map in row-major order
    expected = fmap.reshape(1, 1280, 2, 2, 2, 2).mean(dim=(3, 5)).flatten(2).transpose(1, 2)  # 2x2 block means
    assert torch.allclose(p, expected, atol=1e-5)
    assert pooled.fingerprint() != full.fingerprint()


def test_efficientnet_bf16_autocast_matches_fp32(effnet, photos):
    batch = effnet.collate([effnet.preprocess(load_image(photos["chelsea"]))])
    ref = effnet(**batch).features
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = effnet(**batch).features
    cos = torch.nn.functional.cosine_similarity(ref.flatten(), low.float().flatten(), dim=0)
    assert cos > 0.99


def test_efficientnet_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="'layer'"):
        create_image_encoder("efficientnet-lite0", layer=40)
    with pytest.raises(ConfigError, match="'pool_gird'"):
        create_image_encoder("efficientnet-lite0", pool_gird=3)
    with pytest.raises(ConfigError, match="'resize'"):
        create_image_encoder("efficientnet-lite0", resize="stretch")
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="weights.pth"):
        create_image_encoder("efficientnet-lite0", weights_path=str(bad))
    with pytest.raises(CheckpointError, match="expected 0000"):
        create_image_encoder("efficientnet-lite0", weights_path=str(bad), expected_sha256="0" * 64)


def test_encoders_reject_unloaded_inputs(effnet):
    with pytest.raises(MediaError, match="PIL image"):
        effnet.preprocess("photo.png")
    grey = Image.new("L", (30, 20), 128)  # a non-RGB PIL image is converted, not rejected
    assert effnet.preprocess(grey)["pixel_values"].shape == (3, 224, 224)


def test_shared_instances():
    a = create_image_encoder("efficientnet-lite0", share=True, pool_grid=2)
    b = create_image_encoder("efficientnet-lite0", share=True, pool_grid=2)
    c = create_image_encoder("efficientnet-lite0", pool_grid=2)
    assert a is b and a is not c
    assert create_image_encoder("efficientnet-lite0", share=True, pool_grid=3) is not a


# -- timm ------------------------------------------------------------------------------------------------------------
def test_timm_cnn_tokens_and_preprocessing(photos):
    kw = {"model_name": "resnet18", "pretrained": False, "image_size": 64}
    enc = create_image_encoder("timm", **kw)
    assert enc.id == "timm/resnet18" and enc.revision == "random-init-seed0"
    assert enc.data_config["input_size"] == [3, 64, 64] and enc.data_config["interpolation"] == "bicubic"
    cat = load_image(photos["chelsea"])
    out = enc.encode([cat])
    assert out.features.shape == (1, 2 * 2, 512) and enc.output_dim == 512
    # same seed -> same random weights -> same features (so a feature cache keyed on the revision is valid)
    again = create_image_encoder("timm", **kw)
    assert torch.equal(again.encode([cat]).features, out.features)
    other = create_image_encoder("timm", seed=1, **kw)
    assert other.revision == "random-init-seed1" and not torch.equal(other.encode([cat]).features, out.features)
    pen = create_image_encoder("timm", layer="penultimate", **kw)
    assert pen.encode([cat]).features.shape == (1, 4 * 4, 256)


def test_timm_vit_layers_and_cls(photos):
    kw = {"model_name": "vit_tiny_patch16_224", "pretrained": False, "model_kwargs": {"img_size": 64, "depth": 3}}
    img = load_image(photos["astronaut"])
    last = create_image_encoder("timm", **kw)
    assert last.data_config["input_size"] == [3, 64, 64]
    assert last.encode([img]).features.shape == (1, 1 + 16, 192)
    assert create_image_encoder("timm", drop_cls=True, **kw).encode([img]).features.shape == (1, 16, 192)
    pen = create_image_encoder("timm", layer="penultimate", **kw)
    x = pen.collate([pen.preprocess(img)])["pixel_values"]
    with torch.no_grad():
        m = pen.model
        h = m.norm_pre(m._pos_embed(m.patch_embed(x)))
        for blk in m.blocks[:2]:
            h = blk(h)
    assert torch.allclose(pen(pixel_values=x).features, h, atol=1e-5)  # block 1 of 3, with its CLS token first


def test_timm_local_checkpoint(tmp_path, photos):
    import timm

    src = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save(src.state_dict(), path)
    enc = create_image_encoder("timm", model_name="resnet18", checkpoint_path=str(path), seed=123, image_size=64)
    assert enc.revision.startswith("sha256:")
    x = enc.collate([enc.preprocess(load_image(photos["coffee"]))])["pixel_values"]
    with torch.no_grad():
        expected = src.eval().forward_features(x).flatten(2).transpose(1, 2)
    assert torch.allclose(enc(pixel_values=x).features, expected, atol=1e-5)


def test_timm_errors():
    with pytest.raises(ConfigError, match="model_name"):
        create_image_encoder("timm", model_name="no_such_net_9000", pretrained=False)
    with pytest.raises(ConfigError, match="layer"):
        create_image_encoder("timm", model_name="resnet18", pretrained=False, layer=12)


# -- transformers vision models ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """Tiny randomly initialised CLIP (dual encoder), ViT and DINOv2-with-registers saved with image processors."""
    from transformers import (
        BitImageProcessor,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
        ViTConfig,
        ViTImageProcessor,
        ViTModel,
    )

    torch.manual_seed(0)
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2}
    root = tmp_path_factory.mktemp("hf")
    clip = CLIPModel(CLIPConfig(text_config={**small, "vocab_size": 99, "num_hidden_layers": 1},
                                vision_config={**small, "image_size": 32, "patch_size": 8}, projection_dim=16))
    clip.save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "clip")
    ViTModel(ViTConfig(**small, image_size=32, patch_size=8)).save_pretrained(root / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "vit")
    Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**small, image_size=32, patch_size=8, num_register_tokens=2)).save_pretrained(root / "dino")
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "dino")
    return {"root": root, "clip": clip.eval()}


def test_hf_clip_vision_tower_from_a_dual_checkpoint(hf_models, photos):
    path = str(hf_models["root"] / "clip")
    img = load_image(photos["chelsea"])
    llava = create_image_encoder("hf-vision", model=path)  # penultimate layer, CLS dropped
    assert llava.revision.startswith("sha256:") and llava.output_dim == 32
    x = llava.collate([llava.preprocess(img)])["pixel_values"]
    assert x.shape == (1, 3, 32, 32)
    with torch.no_grad():
        ref = hf_models["clip"].vision_model(pixel_values=x, output_hidden_states=True)
    assert torch.allclose(llava(pixel_values=x).features, ref.hidden_states[-2][:, 1:], atol=1e-5)
    last = create_image_encoder("hf-vision", model=path, layer="last", drop_cls=False)
    assert torch.allclose(last(pixel_values=x).features, ref.last_hidden_state, atol=1e-5)
    first = create_image_encoder("hf-vision", model=path, layer=1, drop_cls=False)
    assert torch.allclose(first(pixel_values=x).features, ref.hidden_states[1], atol=1e-5)


def test_hf_vit_and_dinov2_registers(hf_models, photos):
    img = load_image(photos["coffee"])
    vit = create_image_encoder("hf-vision", model=str(hf_models["root"] / "vit"), layer="last")
    assert vit.encode([img]).features.shape == (1, 16, 32)
    dino = create_image_encoder("hf-vision", model=str(hf_models["root"] / "dino"), layer="last")
    assert dino.encode([img]).features.shape == (1, 16, 32)  # CLS + 2 registers dropped
    keep = create_image_encoder("hf-vision", model=str(hf_models["root"] / "dino"), layer="last", drop_cls=False)
    assert keep.encode([img]).features.shape == (1, 19, 32)
    assert not any(p.requires_grad for p in keep.parameters())


def test_hf_errors(hf_models, tmp_path):
    with pytest.raises(ModelNotFoundError, match="no-model-here"):
        create_image_encoder("hf-vision", model=str(tmp_path / "no-model-here"), local_files_only=True)
    with pytest.raises(ConfigError, match="layer"):
        create_image_encoder("hf-vision", model=str(hf_models["root"] / "vit"), layer=9)
    with pytest.raises(ConfigError, match="'dtype'"):
        create_image_encoder("hf-vision", model=str(hf_models["root"] / "vit"), dtype="int8")


def test_batches_of_different_image_sizes_match_single_items(effnet, photos):
    imgs = [load_image(photos[n]) for n in ("rocket", "camera")]  # 640x427 colour, 512x512 greyscale
    out = effnet.encode(imgs)
    assert out.features.shape == (2, 49, 1280)
    assert all(torch.allclose(out.features[i : i + 1], effnet.encode([im]).features, atol=1e-4) for i, im in enumerate(imgs))
    assert np.isfinite(out.features.numpy()).all()
