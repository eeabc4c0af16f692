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
    assert process_image(_encode(_gradient(400, 200)))[1] == "ok"       # aspect exactly 2
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
