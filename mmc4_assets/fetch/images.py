"""Validate, filter, resize and fingerprint one downloaded image (MMC4's image rules).

Speed notes (per image on the benchmark corpus, one core; benchmarks/fetch_vs_img2dataset.py):
everything after the header read is native code, the fastest we measured on PyPI wheels:

* decode (~5.5 ms): a JPEG goes to libjpeg-turbo through simplejpeg, scaled in the DCT
  domain by the largest power of two that keeps it at least the target size (1/2, 1/4,
  1/8 have SIMD kernels; the other eighths run scalar C and cost more than they save).
  Other formats, CMYK JPEGs and anything simplejpeg refuses go through Pillow;
* resize (~1 ms): OpenCV bilinear on what is left after the DCT scaling, under 2x, where
  bilinear still touches every source pixel. Pillow's bilinear took ~6 ms and OpenCV's
  INTER_AREA ~6 ms at these non-integer factors;
* encode (~1.9 ms): OpenCV's libjpeg-turbo at quality 90, 4:2:0 (as Pillow and img2dataset
  do), no Huffman optimisation (it saved ~7 % of bytes for ~2.5 ms);
* pHash (~0.4 ms): see :func:`phash_pixels`.

Pixels are BGR throughout, OpenCV's order, so nothing is converted twice. OpenCV's own
thread pool is off: images are processed in parallel, one per worker thread.
"""

from __future__ import annotations

import hashlib
import io
import math
import warnings
from dataclasses import dataclass
from struct import error as struct_error  # Pillow's parsers raise it on short headers

import cv2
import numpy as np
import scipy.fft
import simplejpeg
from PIL import Image, ImageFile, UnidentifiedImageError

from mmc4_assets.fetch.sniff import DECODED_FORMATS, SNIFF_BYTES, sniff_image_format
from mmc4_assets.mmc4_params import ImageLimits  # noqa: F401  (re-exported: the fetch step's settings)

cv2.setNumThreads(1)  # one image per worker thread; OpenCV's pool would oversubscribe the cores

# Statuses owned by this step (the download layer owns the HTTP ones).
NOT_AN_IMAGE = "not_an_image"
UNSUPPORTED_FORMAT = "unsupported_format"
DECOMPRESSION_BOMB = "decompression_bomb"
UNDECODABLE = "undecodable"
TOO_SMALL = "too_small"
BAD_ASPECT = "bad_aspect"


@dataclass(frozen=True)
class ProcessedImage:
    data: bytes  # JPEG bytes as stored
    sha256: str  # of the stored bytes: the content address
    phash: str  # 64-bit perceptual hash, hex
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
    """64-bit DCT perceptual hash of a Pillow image, as hex (see :func:`phash_pixels`)."""
    return phash_pixels(cv2.cvtColor(np.asarray(img.convert("RGB")), cv2.COLOR_RGB2BGR))


def phash_pixels(bgr: np.ndarray) -> str:
    """imagehash.phash's algorithm (DCT of a 32x32 grey thumbnail, 8x8 low frequencies
    against their median) on a cheaper thumbnail: bilinear to 256x256, then an exact 8x8
    area average. imagehash runs Lanczos over the full picture; on the benchmark corpus this
    is 0.4 ms instead of 3 ms and 0.6 bits from imagehash's value on average (4 at most),
    while distinct pictures stay >= 16 bits apart."""
    grey = cv2.cvtColor(cv2.resize(bgr, (256, 256), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2GRAY)
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float64)
    dct = scipy.fft.dct(scipy.fft.dct(small, axis=0), axis=1)[:8, :8]
    bits = (dct > np.median(dct)).flatten()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def _dct_scale(width: int, height: int, target: tuple[int, int]) -> int:
    """Largest of 1, 2, 4, 8 that keeps a JPEG decoded at 1/scale at least ``target``."""
    scale = 1
    while scale < 8 and -(-width // (scale * 2)) >= target[0] and -(-height // (scale * 2)) >= target[1]:
        scale *= 2
    return scale


def _decode_jpeg(body: bytes, width: int, height: int, target: tuple[int, int]) -> np.ndarray | None:
    """BGR pixels through libjpeg-turbo, DCT-scaled toward ``target``; None when it cannot
    (CMYK/YCCK, or a header Pillow reads and libjpeg-turbo does not): Pillow decides then.
    Raises ValueError on corrupt or truncated data (``strict``: libjpeg's warnings are errors)."""
    try:
        _, _, colorspace, _ = simplejpeg.decode_jpeg_header(body)
    except ValueError:
        return None
    if colorspace.lower() not in ("rgb", "ycbcr", "gray"):  # simplejpeg says "YCbCr", "Gray", "CMYK", "YCCK"
        return None
    scale = _dct_scale(width, height, target)
    resized = target != (width, height)  # the fast IDCT/upsampling is invisible after a downscale
    pixels = simplejpeg.decode_jpeg(
        body,
        colorspace="BGR",
        fastdct=resized,
        fastupsample=resized,
        min_width=-(-width // scale),
        min_height=-(-height // scale),
        strict=True,
    )
    if pixels.shape[1] < target[0] or pixels.shape[0] < target[1]:
        raise ValueError("decoded size is smaller than the header says")
    return pixels


def _decode_pillow(img: Image.Image, fmt: str, target: tuple[int, int]) -> np.ndarray:
    if fmt == "JPEG" and target != img.size:
        img.draft("RGB", target)  # DCT-domain downscale, as on the fast path
    img.load()  # the whole body is decoded here: truncation raises
    rgb = _to_rgb(img)
    factor = min(rgb.width // target[0], rgb.height // target[1])
    if factor >= 2:
        # an exact box average by an integer factor first: bilinear alone would skip
        # source pixels (alias) above 2x, and this leaves it less than 2x to do
        rgb = rgb.reduce(factor)
    return cv2.cvtColor(np.asarray(rgb), cv2.COLOR_RGB2BGR)


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
            # Only the sniffed format's parser ever sees the bytes (it reads the header only).
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
            pixels = _decode_jpeg(body, width, height, target) if fmt == "JPEG" else None
            if pixels is None:
                pixels = _decode_pillow(img, fmt, target)
            if (pixels.shape[1], pixels.shape[0]) != target:
                # after the DCT scaling what is left is < 2x (JPEGs), where bilinear touches
                # every source pixel; INTER_AREA is 6x slower at non-integer factors
                pixels = cv2.resize(pixels, target, interpolation=cv2.INTER_LINEAR)
            encoded, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, limits.jpeg_quality])
            if not encoded:
                return None, UNDECODABLE
            data = buf.tobytes()
    except UnidentifiedImageError:
        return None, NOT_AN_IMAGE
    except Image.DecompressionBombError:
        return None, DECOMPRESSION_BOMB
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, struct_error, cv2.error):
        return None, UNDECODABLE
    return ProcessedImage(
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        phash=phash_pixels(pixels),
        width=target[0],
        height=target[1],
        orig_width=width,
        orig_height=height,
        orig_format=orig_format,
    ), "ok"
