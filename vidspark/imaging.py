"""Decode image bytes into model-ready uint8 arrays (pure numpy/Pillow, no Spark).

Every Pillow mode is brought to 8-bit RGB: palette and grey are expanded, CMYK converted, alpha
composited over black, 16-bit and 32-bit integer/float grey scaled by their range. EXIF orientation
is applied. The frame is resized to ``size``×``size`` without cropping (CCTV subjects sit near
the edges as often as in the middle), which is what Keras' ``load_img(target_size=...)`` does.
"""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps

_RESAMPLE = Image.Resampling.BILINEAR


class DecodeError(ValueError):
    """Bytes that are not a decodable image; the message says why."""


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            scale = 65535.0
        else:
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            arr = arr - lo
            scale = max(hi - lo, 1e-12)
        grey = np.clip(np.nan_to_num(arr / scale * 255.0 + 0.5), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "P" or mode == "PA":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(data: bytes, *, size: int = 224, max_pixels: int | None = 89_478_485) -> np.ndarray:
    """Decode one image into a ``(size, size, 3)`` uint8 RGB array.

    Parameters
    ----------
    data
        Encoded bytes in any format Pillow reads (GIF: first frame).
    size
        Output side in pixels.
    max_pixels
        Refuse images declaring more pixels than this (decompression bombs); None disables.

    Raises
    ------
    DecodeError
        Empty, truncated, corrupt or non-image bytes, or an image over ``max_pixels``.
    """
    if not data:
        raise DecodeError("zero-byte object")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            width, height = img.size
            if max_pixels is not None and width * height > max_pixels:
                raise DecodeError(f"image of {width}x{height} pixels is over the limit of {max_pixels} (featurizer.max_image_pixels)")
            if img.format == "JPEG" and isinstance(img, ImageFile.ImageFile):
                # DCT-domain downscaling: decode at the smallest scale still >= the target size.
                img.draft("RGB", (size, size))
            img.load()
            img = ImageOps.exif_transpose(img) or img
            img = _to_rgb(img)
            if img.size != (size, size):
                img = img.resize((size, size), _RESAMPLE, reducing_gap=3.0)
            arr = np.asarray(img, dtype=np.uint8)
    except DecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(f"decompression bomb refused: {exc}") from exc
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, struct.error) as exc:
        raise DecodeError(f"{type(exc).__name__}: {exc}") from exc
    if arr.shape != (size, size, 3):  # pragma: no cover - guarded by _to_rgb
        raise DecodeError(f"decoded array has shape {arr.shape}, expected {(size, size, 3)}")
    return arr
