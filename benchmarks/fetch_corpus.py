"""Photo-like JPEGs and PNGs for the fetch benchmarks, generated once into a directory and reused.

Pure noise compresses far worse than photos and flat gradients far better, so each picture
is a smooth random field (a few blurred blobs of colour) plus fine grain: a 1000 px
picture at quality 85 comes out near 100-200 KB, like a web photo. Every tenth picture is
a PNG (300-1400 px; on the web PNGs are rarer and smaller than photos, and a photo-like
one is a few hundred KB to a few MB, which is what makes them expensive to decode).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from PIL import Image

MANIFEST = "manifest.json"


def render(seed: int, width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(rng.integers(3, 9), rng.integers(3, 9), 3), dtype=np.uint8)
    img = Image.fromarray(coarse, "RGB").resize((width, height), Image.Resampling.BICUBIC)
    detail = rng.integers(0, 256, size=(max(2, height // 24), max(2, width // 24), 3), dtype=np.uint8)
    texture = Image.fromarray(detail, "RGB").resize((width, height), Image.Resampling.BICUBIC)
    img = Image.blend(img, texture, 0.35)
    grain = rng.integers(-10, 11, size=(height, width, 1), dtype=np.int16)
    arr = np.clip(np.asarray(img, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def build_corpus(directory: Path, n: int, seed: int = 0) -> list[dict]:
    """``n`` pictures 300-2000 px (aspect 0.5-2; every tenth a PNG) in ``directory``; files
    already there are reused (the picture of a name never changes)."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest_path = directory / MANIFEST
    if manifest_path.exists():
        entries = json.loads(manifest_path.read_text())
        if len(entries) >= n:
            return entries[:n]
    rng = random.Random(seed)
    entries = []
    for i in range(n):
        longer = rng.randint(300, 2000)
        aspect = rng.uniform(0.5, 2.0)
        quality = rng.randint(75, 92)
        png = i % 10 == 7
        if png:
            longer = 300 + (longer - 300) * 1100 // 1700
        w, h = (longer, max(150, round(longer / aspect))) if aspect >= 1 else (max(150, round(longer * aspect)), longer)
        name = f"img{i:05d}.{'png' if png else 'jpg'}"
        path = directory / name
        if not path.exists():
            picture = render(seed * 1_000_003 + i, w, h)
            if png:
                picture.save(path, "PNG", compress_level=6)
            else:
                picture.save(path, "JPEG", quality=quality)
        entries.append({"name": name, "width": w, "height": h, "bytes": path.stat().st_size})
    manifest_path.write_text(json.dumps(entries))
    return entries


if __name__ == "__main__":
    import sys

    out = build_corpus(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 200)
    sizes = [e["bytes"] for e in out]
    print(f"{len(out)} images, mean {sum(sizes) / len(sizes) / 1024:.0f} KiB")
