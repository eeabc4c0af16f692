"""Validate, filter, resize and fingerprint one downloaded image (MMC4's image rules)."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import imagehash
from PIL import Image, ImageFile, UnidentifiedImageError


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


def process_image(body: bytes, limits: ImageLimits = ImageLimits()) -> tuple[ProcessedImage | None, str]:
    """(image, "ok") or (None, drop reason). Never raises on bad bytes."""
    # never load truncated data silently: a half image would pass as a grey-bottomed one
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(body))
            width, height = img.size
            orig_format = img.format or "unknown"
            if width * height > limits.max_pixels:
                return None, "decompression_bomb"
            if width <= 0 or height <= 0:
                return None, "undecodable"
            if min(width, height) < limits.min_side:
                return None, "too_small"
            aspect = width / height
            if aspect > limits.max_aspect or aspect < 1.0 / limits.max_aspect:
                return None, "bad_aspect"
            img.load()
    except UnidentifiedImageError:
        return None, "not_an_image"
    except Image.DecompressionBombError:
        return None, "decompression_bomb"
    except (OSError, ValueError, SyntaxError, EOFError):
        return None, "undecodable"

    rgb = _to_rgb(img)
    if max(width, height) > limits.max_side:
        rgb.thumbnail((limits.max_side, limits.max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=limits.jpeg_quality, optimize=True)
    data = out.getvalue()
    return ProcessedImage(
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        phash=str(imagehash.phash(rgb)),
        width=rgb.width,
        height=rgb.height,
        orig_width=width,
        orig_height=height,
        orig_format=orig_format,
    ), "ok"
