import io

from PIL import Image

from mmc4_assets.fetch.images import ImageLimits, process_image


def _encode(img: Image.Image, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _gradient(w, h, mode="RGB"):
    img = Image.linear_gradient("L").resize((w, h)).convert(mode)
    return img


def test_ok_image_resized_to_max_side_and_hashed():
    image, status = process_image(_encode(_gradient(1600, 1200)))
    assert status == "ok"
    assert (image.width, image.height) == (800, 600)
    assert (image.orig_width, image.orig_height) == (1600, 1200)
    assert len(image.phash) == 16 and len(image.sha256) == 64
    assert image.image_name == f"{image.sha256}.jpg"
    assert Image.open(io.BytesIO(image.data)).size == (800, 600)


def test_small_images_are_never_upscaled():
    image, status = process_image(_encode(_gradient(300, 200)))
    assert status == "ok" and (image.width, image.height) == (300, 200)


def test_mmc4_size_and_aspect_boundaries():
    assert process_image(_encode(_gradient(150, 150)))[1] == "ok"
    assert process_image(_encode(_gradient(149, 200)))[1] == "too_small"
    assert process_image(_encode(_gradient(400, 200)))[1] == "ok"  # aspect exactly 2
    assert process_image(_encode(_gradient(401, 200)))[1] == "bad_aspect"
    assert process_image(_encode(_gradient(200, 401)))[1] == "bad_aspect"


def test_broken_inputs_have_reasons():
    good = _encode(_gradient(400, 300))
    assert process_image(good[: len(good) // 2])[1] == "undecodable"
    assert process_image(b"<html>not an image</html>")[1] == "not_an_image"
    assert process_image(b"")[1] == "not_an_image"
    bomb = _encode(Image.new("L", (9000, 9000)), "PNG")
    assert process_image(bomb, ImageLimits(max_pixels=50_000_000))[1] == "decompression_bomb"


def test_transparent_png_is_flattened_to_rgb_jpeg():
    img = Image.new("RGBA", (300, 300), (255, 0, 0, 0))
    image, status = process_image(_encode(img, "PNG"))
    assert status == "ok"
    assert Image.open(io.BytesIO(image.data)).getpixel((10, 10)) >= (250, 250, 250)


# --------------------------------------------------------------------------- hostile bytes, fast paths

import random  # noqa: E402
import struct  # noqa: E402
import zlib  # noqa: E402

import imagehash  # noqa: E402
import pytest  # noqa: E402

from mmc4_assets.fetch.images import fit_size, phash  # noqa: E402
from mmc4_assets.fetch.sniff import sniff_image_format  # noqa: E402


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A ~100-byte PNG whose header declares width x height pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _photo(w, h, seed=0):
    rng = random.Random(seed)
    img = Image.new("RGB", (8, 8))
    img.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(64)])
    return img.resize((w, h), Image.Resampling.BICUBIC)


def test_small_png_declaring_20000x20000_is_a_bomb_and_never_decoded():
    body = png_bomb()
    assert len(body) < 200
    assert process_image(body)[1] == "decompression_bomb"


def test_truncated_large_jpeg_on_the_draft_path_is_undecodable():
    good = _encode(_photo(2000, 1500))
    assert process_image(good)[1] == "ok"
    assert process_image(good[: len(good) * 2 // 3])[1] == "undecodable"


@pytest.mark.parametrize(
    "fmt, size, seed",
    [
        ("JPEG", (1900, 1300), 3),  # DCT-scaled decode, then bilinear for the rest
        ("PNG", (2600, 1500), 5),  # integer box reduce, then bilinear for the rest
    ],
)
def test_scaled_decoding_keeps_exact_size_and_a_close_phash(fmt, size, seed):
    img = _photo(*size, seed=seed)
    image, status = process_image(_encode(img, fmt))
    assert status == "ok" and (image.width, image.height) == fit_size(*size, 800)
    reference = img.copy()
    reference.thumbnail((800, 800), Image.Resampling.LANCZOS)
    assert imagehash.hex_to_hash(image.phash) - imagehash.phash(reference) <= 6


def test_fit_size_matches_pillow_thumbnail():
    rng = random.Random(0)
    for _ in range(40):
        w, h = rng.randint(150, 3000), rng.randint(150, 3000)
        img = Image.new("L", (w, h))
        img.thumbnail((800, 800), reducing_gap=None)
        assert fit_size(w, h, 800) == img.size


def test_phash_is_64_bit_hex_and_stable():
    img = _photo(400, 300)
    assert phash(img) == phash(img.copy()) and len(phash(img)) == 16
    assert int(phash(img), 16) != 0


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "WEBP", "BMP"])
def test_other_web_formats_are_decoded(fmt):
    image, status = process_image(_encode(_photo(300, 300), fmt))
    assert status == "ok" and image.orig_format == fmt


def test_the_bytes_decide_not_the_name():
    # PNG bytes fetched from a .jpg URL are fine; a TIFF is an image we do not decode
    assert process_image(_encode(_photo(300, 300), "PNG"))[1] == "ok"
    assert process_image(_encode(_photo(300, 300), "TIFF"))[1] == "unsupported_format"
    assert process_image(b"\x1f\x8b\x08\x00" + bytes(100))[1] == "not_an_image"  # gzip


def test_cmyk_jpeg_is_stored_as_rgb():
    image, status = process_image(_encode(_photo(300, 300).convert("CMYK")))
    assert status == "ok"
    assert Image.open(io.BytesIO(image.data)).mode == "RGB"


@pytest.mark.parametrize(
    "head, name",
    [
        (b"\xff\xd8\xff\xe0", "JPEG"),
        (b"\x89PNG\r\n\x1a\n", "PNG"),
        (b"GIF89a", "GIF"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "WEBP"),
        (b"II*\x00", "TIFF"),
        (b"\x00\x00\x00\x1cftypavif", "AVIF"),
        (b"<html>", None),
        (b"BMany words of plain text", None),
        (b"", None),
    ],
)
def test_sniff_image_format(head, name):
    assert sniff_image_format(head) == name


# -- the fast path (simplejpeg + OpenCV, BGR inside): colours, scaling, fallbacks ------------

from mmc4_assets.fetch.images import _dct_scale  # noqa: E402


@pytest.mark.parametrize(
    "size, expected",
    [
        ((800, 600), 1),
        ((1597, 900), 1),
        ((1599, 900), 2),
        ((1600, 1200), 2),
        ((3300, 2000), 4),
        ((6400, 4000), 8),
        ((9000, 4500), 8),
    ],
)
def test_dct_scale_is_the_largest_power_of_two_that_keeps_the_target(size, expected):
    target = fit_size(*size, 800)
    scale = _dct_scale(*size, target)
    assert scale == expected
    assert -(-size[0] // scale) >= target[0] and -(-size[1] // scale) >= target[1]


@pytest.mark.parametrize(
    "fmt, mode, size",
    [
        ("JPEG", "RGB", (1700, 1000)),
        ("JPEG", "RGB", (500, 400)),
        ("JPEG", "CMYK", (1700, 1000)),
        ("PNG", "RGB", (2500, 1400)),
        ("PNG", "RGBA", (600, 500)),
        ("WEBP", "RGB", (1000, 900)),
    ],
)
def test_colours_survive_every_path(fmt, mode, size):
    # a BGR/RGB mix-up anywhere would swap red and blue in the stored JPEG
    img = Image.new("RGB", size, (220, 30, 40))
    img.paste((20, 40, 230), (0, 0, size[0] // 2, size[1]))
    body = _encode(img.convert(mode), fmt)
    image, status = process_image(body)
    assert status == "ok" and (image.width, image.height) == fit_size(*size, 800)
    stored = Image.open(io.BytesIO(image.data))
    assert stored.format == "JPEG" and stored.mode == "RGB"
    w, h = stored.size
    left, right = stored.getpixel((w // 4, h // 2)), stored.getpixel((3 * w // 4, h // 2))
    tolerance = 40 if mode == "CMYK" else 12  # CMYK round trips through Pillow's naive conversion
    assert all(abs(a - b) <= tolerance for a, b in zip(left, (20, 40, 230))), left
    assert all(abs(a - b) <= tolerance for a, b in zip(right, (220, 30, 40))), right


def test_grey_jpeg_is_stored_as_rgb_at_the_right_size():
    image, status = process_image(_encode(_photo(1800, 1200).convert("L")))
    assert status == "ok" and (image.width, image.height) == (800, 533)
    assert Image.open(io.BytesIO(image.data)).mode == "RGB"


def test_truncated_png_and_small_truncated_jpeg_are_undecodable():
    png = _encode(_photo(900, 700), "PNG")
    jpeg = _encode(_photo(500, 400))  # no resize: the fast path decodes at full scale
    assert process_image(png[: len(png) // 2])[1] == "undecodable"
    assert process_image(jpeg[: len(jpeg) * 2 // 3])[1] == "undecodable"


@pytest.mark.parametrize("mode, fast", [("RGB", True), ("L", True), ("CMYK", False)])
def test_ordinary_jpegs_take_the_libjpeg_turbo_path(monkeypatch, mode, fast):
    # the fast path silently falling back to Pillow cost 2.5 ms per image once: pin who decodes
    import mmc4_assets.fetch.images as images

    used = []
    real = images._decode_pillow
    monkeypatch.setattr(images, "_decode_pillow", lambda *a: used.append(a) or real(*a))
    image, status = process_image(_encode(_photo(1700, 1000).convert(mode)))
    assert status == "ok" and (image.width, image.height) == (800, 471)
    assert (not used) is fast
