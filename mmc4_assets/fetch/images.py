"""Validate, filter, resize and fingerprint one downloaded image (MMC4's image rules).

Speed notes (measured on the benchmark corpus, see benchmarks/fetch_throughput.py): resizing
dominates, then decoding, then encoding. A JPEG at least twice the target size is decoded at
1/2, 1/4 or 1/8 scale straight from its DCT coefficients (Pillow's draft mode), which shrinks
both the decode and the resize that follows. The resize is Pillow's bilinear, which on a
downscale is a proper antialiasing (triangle) filter: 6.7 ms per image against 10.6 ms for
bicubic and 14.5 ms for Lanczos, a difference of sharpness invisible at the 224 px CLIP
sees. The pHash resamples 800 px -> 32 px through a box reduction first (``reducing_gap``)
instead of a full-width Lanczos pass. simplejpeg, pyvips and OpenCV's INTER_AREA were
measured and were not faster here; pillow-simd would be (resize 5-7x) but cannot be a
dependency next to the pillow that torchvision, open_clip and imagehash require.
"""

from __future__ import annotations

import hashlib
import io
import math
import warnings
from struct import error as struct_error  # Pillow's parsers raise it on short headers
from dataclasses import dataclass

import numpy as np
import scipy.fft
from PIL import Image, ImageFile, UnidentifiedImageError

from mmc4_assets.fetch.sniff import DECODED_FORMATS, SNIFF_BYTES, sniff_image_format

# Statuses owned by this step (the download layer owns the HTTP ones).
NOT_AN_IMAGE = "not_an_image"
UNSUPPORTED_FORMAT = "unsupported_format"
DECOMPRESSION_BOMB = "decompression_bomb"
UNDECODABLE = "undecodable"
TOO_SMALL = "too_small"
BAD_ASPECT = "bad_aspect"


@dataclass(frozen=True)
class ImageLimits:
    min_side: int = 150          # MMC4: drop width or height < 150 px
    max_aspect: float = 2.0      # MMC4: drop aspect ratio > 2 or < 0.5
    max_side: int = 800          # MMC4: resize so the longer side <= 800
    max_pixels: int = 40_000_000  # above this the header is a decompression bomb, never decode
    jpeg_quality: int = 90


@dataclass(frozen=True)
class ProcessedImage:
    data: bytes          # JPEG bytes as stored
    sha256: str          # of the stored bytes: the content address
    phash: str           # 64-bit perceptual hash, hex
    width: int
    height: int
    orig_width: int
    orig_height: int
    orig_format: str

    @property
    def image_name(self) -> str:
        return f"{self.sha256}.jpg"


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "P", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))  # transparent pixels on white, as a browser shows them
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def fit_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Longer side capped at ``max_side``, aspect kept, never upscaled (Image.thumbnail's rounding)."""
    if width <= max_side and height <= max_side:
        return width, height
    aspect = width / height

    def nearest(number: float, key) -> int:
        return max(min(math.floor(number), math.ceil(number), key=key), 1)

    if aspect <= 1:
        return nearest(max_side * aspect, key=lambda n: abs(aspect - n / max_side)), max_side
    return max_side, nearest(max_side / aspect, key=lambda n: 0 if n == 0 else abs(aspect - max_side / n))


def phash(img: Image.Image) -> str:
    """64-bit DCT perceptual hash as hex (imagehash.phash's algorithm, box-reduced first).

    Same as ``imagehash.phash`` except that the 32x32 grey thumbnail is made with
    ``reducing_gap=2``: a tenth of the cost, and on the sample and benchmark images it is
    within a few bits of imagehash's value (duplicates stay at 0, distinct pictures far apart).
    """
    small = img.convert("L").resize((32, 32), Image.Resampling.LANCZOS, reducing_gap=2.0)
    pixels = np.asarray(small, dtype=np.float64)
    dct = scipy.fft.dct(scipy.fft.dct(pixels, axis=0), axis=1)[:8, :8]
    bits = (dct > np.median(dct)).flatten()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def process_image(body: bytes, limits: ImageLimits = ImageLimits()) -> tuple[ProcessedImage | None, str]:
    """(image, "ok") or (None, drop reason). Never raises on bad bytes."""
    fmt = sniff_image_format(body[:SNIFF_BYTES])
    if fmt is None:
        return None, NOT_AN_IMAGE
    if fmt not in DECODED_FORMATS:
        return None, UNSUPPORTED_FORMAT
    # never load truncated data silently: a half image would pass as a grey-bottomed one
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Only the sniffed format's parser ever sees the bytes.
            img = Image.open(io.BytesIO(body), formats=[fmt])
            width, height = img.size
            orig_format = img.format or fmt
            if width <= 0 or height <= 0:
                return None, UNDECODABLE
            if width * height > limits.max_pixels:
                return None, DECOMPRESSION_BOMB
            if min(width, height) < limits.min_side:
                return None, TOO_SMALL
            aspect = width / height
            if aspect > limits.max_aspect or aspect < 1.0 / limits.max_aspect:
                return None, BAD_ASPECT
            target = fit_size(width, height, limits.max_side)
            box = None
            if target != (width, height) and fmt == "JPEG":
                # DCT-domain downscale: only by factors that keep the image >= target size
                drafted = img.draft("RGB", target)
                box = drafted[1] if drafted else None
            img.load()  # the whole body is decoded here: truncation raises
            rgb = _to_rgb(img)
            if rgb.size != target:
                rgb = rgb.resize(target, Image.Resampling.BILINEAR, box=box, reducing_gap=2.0)
    except UnidentifiedImageError:
        return None, NOT_AN_IMAGE
    except Image.DecompressionBombError:
        return None, DECOMPRESSION_BOMB
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, struct_error):
        return None, UNDECODABLE
    out = io.BytesIO()
    # optimize: two more ms per image for ~7 % smaller files, worth it at corpus scale
    rgb.save(out, format="JPEG", quality=limits.jpeg_quality, optimize=True)
    data = out.getvalue()
    return ProcessedImage(
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        phash=phash(rgb),
        width=rgb.width,
        height=rgb.height,
        orig_width=width,
        orig_height=height,
        orig_format=orig_format,
    ), "ok"

