"""Loading real and generated image files, mode conversion, EXIF orientation, size limits and bad inputs."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image
from xmm.errors import ConfigError, CorruptMediaError, EmptyMediaError, MediaError, MediaTooLargeError, XmmError
from xmm_plugin_image.loading import ImageLoadConfig, default_load_config, image_fingerprint, load_image


@pytest.mark.parametrize("ext", ["png", "jpg", "webp"])
def test_formats_load_as_rgb_close_to_source(image_files, photos, ext):
    img = load_image(image_files[ext])
    assert img.mode == "RGB" and img.size == (128, 128)
    ref = np.asarray(Image.fromarray(photos["astronaut"]).resize((128, 128)), dtype=np.float32)
    err = np.abs(np.asarray(img, dtype=np.float32) - ref).mean()
    assert err < (0.01 if ext == "png" else 6.0)  # PNG is lossless; JPEG/WebP at quality 95 are close


def test_path_bytes_and_pil_inputs_agree(image_files):
    from_path = load_image(image_files["png"])
    from_str = load_image(str(image_files["png"]))
    from_bytes = load_image(image_files["png"].read_bytes())
    from_pil = load_image(Image.open(image_files["png"]))
    for other in (from_str, from_bytes, from_pil):
        assert np.array_equal(np.asarray(from_path), np.asarray(other))


def test_loaded_image_is_a_new_object():
    src = Image.new("RGB", (8, 8), (1, 2, 3))
    out = load_image(src)
    assert out is not src
    out.putpixel((0, 0), (9, 9, 9))
    assert src.getpixel((0, 0)) == (1, 2, 3)


def test_rgba_is_composited_on_the_background(photos, tmp_path):
    rgb = photos["astronaut"][:64, :64]
    alpha = np.full((64, 64), 255, np.uint8)
    alpha[:, :16] = 0
    alpha[:, 16:32] = 128
    path = tmp_path / "alpha.png"
    Image.fromarray(np.dstack([rgb, alpha])).save(path)
    out = np.asarray(load_image(path)).astype(np.int32)
    assert (out[:, :16] == 255).all()  # fully transparent -> white
    assert np.array_equal(out[:, 32:], rgb[:, 32:])  # opaque -> unchanged
    expected = np.rint(rgb[:, 16:32] * (128 / 255) + 255 * (127 / 255))
    assert np.abs(out[:, 16:32] - expected).max() <= 1
    black = np.asarray(load_image(path, ImageLoadConfig(background=(0, 0, 0))))
    assert (black[:, :16] == 0).all()


def test_palette_with_transparency(tmp_path):
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    pal.putpixel((1, 1), 1)
    path = tmp_path / "palette.png"
    pal.save(path, transparency=0)
    img = load_image(path)
    assert img.getpixel((0, 0)) == (255, 255, 255)  # transparent index -> background
    assert img.getpixel((1, 1)) == (255, 0, 0)


def test_greyscale_becomes_equal_channels(photos):
    cam = photos["camera"]
    arr = np.asarray(load_image(cam))
    assert arr.shape == (*cam.shape, 3)
    assert all(np.array_equal(arr[:, :, c], cam) for c in range(3))


def test_sixteen_bit_is_scaled_to_eight_bit(tmp_path):
    values = np.array([[0, 257 * 128, 65535, 257]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I;16")
    arr = np.asarray(load_image(path))
    assert arr[0, :, 0].tolist() == [0, 128, 255, 1]
    assert np.array_equal(np.asarray(load_image(values)), arr)  # uint16 arrays scale the same way


def test_int32_and_float_images():
    wide = np.array([[0, 50_000, 100_000]], dtype=np.int32)
    assert np.asarray(load_image(Image.fromarray(wide)))[0, :, 0].tolist() == [0, 128, 255]
    unit = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    assert np.asarray(load_image(Image.fromarray(unit, mode="F")))[0, :, 0].tolist() == [0, 128, 255]
    assert np.asarray(load_image(unit))[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_is_applied(tmp_path):
    src = Image.new("RGB", (40, 20), (0, 0, 255))
    src.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    src.save(path, exif=exif.tobytes(), quality=95)
    img = load_image(path)
    assert img.size == (20, 40)
    top, bottom = img.getpixel((10, 5)), img.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # the left edge went to the top
    assert bottom[2] > 200 and bottom[0] < 60
    raw = load_image(path, ImageLoadConfig(exif_transpose=False))
    assert raw.size == (40, 20)


def test_animated_gif_gives_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    assert load_image(path).getpixel((4, 4)) == (255, 0, 0)


# -- limits ------------------------------------------------------------------------------------------------------
def test_pixel_limit_names_the_file_and_the_count(image_files):
    with pytest.raises(MediaTooLargeError) as e:
        load_image(image_files["png"], ImageLoadConfig(max_pixels=10_000))
    assert "astronaut.png" in str(e.value) and "16,384 pixels" in str(e.value)


def test_limit_is_checked_from_the_header_before_decoding(tmp_path, make_png_header):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(make_png_header(12_000, 12_000))  # 144 MP claimed, no pixel data at all
    with pytest.raises(MediaTooLargeError) as e:
        load_image(bomb)
    assert "bomb.png" in str(e.value) and "144,000,000" in str(e.value)
    # under a higher limit the same file is reported as what it is: a header without data
    with pytest.raises(CorruptMediaError):
        load_image(bomb, ImageLoadConfig(max_pixels=200_000_000))


def test_pillow_hard_limit_is_reported_as_too_large(tmp_path, make_png_header):
    huge = tmp_path / "huge.png"
    huge.write_bytes(make_png_header(30_000, 30_000))
    with pytest.raises(MediaTooLargeError, match="huge.png"):
        load_image(huge)


def test_in_memory_images_are_limited_too():
    with pytest.raises(MediaTooLargeError):
        load_image(Image.new("RGB", (200, 200)), ImageLoadConfig(max_pixels=1000))
    with pytest.raises(MediaTooLargeError):
        load_image(np.zeros((200, 200, 3), np.uint8), ImageLoadConfig(max_pixels=1000))


def test_limit_from_environment(monkeypatch, image_files):
    monkeypatch.setenv("XMM_IMAGE_MAX_PIXELS", "100")
    assert default_load_config().max_pixels == 100
    with pytest.raises(MediaTooLargeError):
        load_image(image_files["png"])
    monkeypatch.setenv("XMM_IMAGE_MAX_PIXELS", "lots")
    with pytest.raises(ConfigError, match="max_pixels"):
        default_load_config()


def test_config_rejects_unknown_fields():
    with pytest.raises(ValueError, match="max_pixel"):
        ImageLoadConfig(max_pixel=5)


# -- bad inputs --------------------------------------------------------------------------------------------------
def test_truncated_jpeg_is_corrupt(image_files):
    with pytest.raises(CorruptMediaError) as e:
        load_image(image_files["truncated"])
    assert "truncated.jpg" in str(e.value) and "image input" in str(e.value)


def test_lazily_opened_truncated_pil_image_is_corrupt(image_files):
    lazy = Image.open(image_files["truncated"])  # only the header is read here
    with pytest.raises(CorruptMediaError, match="truncated.jpg"):
        load_image(lazy)


def test_text_file_named_png_is_corrupt(image_files):
    with pytest.raises(CorruptMediaError) as e:
        load_image(image_files["text"])
    assert "notes.png" in str(e.value) and "not a recognised image format" in str(e.value)


def test_empty_inputs(image_files):
    with pytest.raises(EmptyMediaError, match="empty.png"):
        load_image(image_files["empty"])
    with pytest.raises(EmptyMediaError):
        load_image(b"")


def test_missing_file_directory_and_wrong_types(tmp_path):
    with pytest.raises(MediaError, match="file not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(MediaError, match="directory"):
        load_image(tmp_path)
    with pytest.raises(MediaError, match="unsupported image input type int"):
        load_image(42)
    with pytest.raises(MediaError, match="not an image"):
        load_image(np.zeros((4, 4, 7), np.uint8))


def test_garbage_bytes_are_corrupt_and_every_error_is_an_xmm_error():
    with pytest.raises(CorruptMediaError, match="<9 bytes>") as e:
        load_image(b"GIF89a\x00\x01\x02")
    assert isinstance(e.value, XmmError)


# -- fingerprints ------------------------------------------------------------------------------------------------
def test_fingerprints(image_files):
    path = image_files["png"]
    assert image_fingerprint(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert image_fingerprint(path.read_bytes()) == image_fingerprint(path)
    a = Image.open(path).convert("RGB")
    b = a.copy()
    assert image_fingerprint(a) == image_fingerprint(b)
    b.putpixel((0, 0), (0, 0, 0) if a.getpixel((0, 0)) != (0, 0, 0) else (1, 1, 1))
    assert image_fingerprint(a) != image_fingerprint(b)
    assert image_fingerprint(a) != image_fingerprint(a.convert("RGBA"))
    arr = np.asarray(a)
    assert image_fingerprint(arr) == image_fingerprint(arr.copy())
    assert image_fingerprint(arr) != image_fingerprint(arr.astype(np.uint16))
    buf = io.BytesIO()
    a.save(buf, format="PNG")
    assert image_fingerprint(buf.getvalue()) == hashlib.sha256(buf.getvalue()).hexdigest()
