from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from vidspark.imaging import DecodeError, decode_image


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def halves(w: int = 64, h: int = 32) -> np.ndarray:
    """Left half red, right half blue: orientation and channel order are visible."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (255, 0, 0)
    arr[:, w // 2 :] = (0, 0, 255)
    return arr


def test_rgb_png_resized_exactly():
    out = decode_image(encode(Image.fromarray(halves()), "PNG"), size=32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert tuple(out[16, 2]) == (255, 0, 0) and tuple(out[16, 29]) == (0, 0, 255)


def test_grey_l_becomes_three_equal_channels():
    out = decode_image(encode(Image.new("L", (40, 40), 77), "PNG"), size=16)
    assert (out == 77).all()


def test_rgba_is_composited_over_black():
    rgba = Image.new("RGBA", (20, 20), (200, 100, 50, 0))  # fully transparent
    out = decode_image(encode(rgba, "PNG"), size=8)
    assert (out == 0).all()
    opaque = decode_image(encode(Image.new("RGBA", (20, 20), (200, 100, 50, 255)), "PNG"), size=8)
    assert tuple(opaque[4, 4]) == (200, 100, 50)


def test_cmyk_jpeg_converted_to_rgb():
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red in CMYK
    out = decode_image(encode(cmyk, "JPEG", quality=95), size=16)
    r, g, b = out[8, 8].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_sixteen_bit_png_scaled_to_eight_bits():
    arr = np.full((16, 16), 65535 // 2, dtype=np.uint16)
    arr[:, 8:] = 65535
    img = Image.fromarray(arr)
    assert img.mode.startswith("I")
    out = decode_image(encode(img, "PNG"), size=16)
    assert abs(int(out[0, 0, 0]) - 128) <= 1 and int(out[0, 15, 0]) == 255


def test_palette_gif_first_frame():
    frames = [Image.new("P", (10, 10), i) for i in (1, 2)]
    for f, color in zip(frames, ((0, 255, 0), (255, 0, 0)), strict=True):
        f.putpalette([0, 0, 0, *color] * 128)
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    out = decode_image(buf.getvalue(), size=4)
    assert tuple(out[2, 2]) == (0, 255, 0)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_applied(orientation):
    img = Image.fromarray(halves(64, 32))
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = decode_image(encode(img, "JPEG", quality=95, exif=exif.tobytes()), size=32)
    red = out[..., 0].astype(int) > 150
    if orientation == 3:  # 180 degrees: red moves to the right half
        assert red[:, 24:].mean() > 0.9 and red[:, :8].mean() < 0.1
    elif orientation == 6:  # rotate 90 CW to display: red (left) goes to the top
        assert red[:8, :].mean() > 0.9 and red[24:, :].mean() < 0.1
    else:  # 8: rotate 90 CCW to display: red goes to the bottom
        assert red[24:, :].mean() > 0.9 and red[:8, :].mean() < 0.1


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "zero-byte"),
        (b"this is a text file, not an image", "UnidentifiedImageError|cannot identify"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "Error"),
    ],
)
def test_bad_bytes_raise_decode_error(data, match):
    with pytest.raises(DecodeError, match=match):
        decode_image(data)


def test_truncated_jpeg_raises_decode_error():
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(DecodeError):
        decode_image(data[: len(data) // 2])


def test_pixel_limit_refuses_large_images():
    data = encode(Image.new("RGB", (300, 300)), "PNG")
    with pytest.raises(DecodeError, match="max_image_pixels"):
        decode_image(data, max_pixels=300 * 299)
    assert decode_image(data, max_pixels=300 * 300).shape == (224, 224, 3)
