"""What a body really is, from its first bytes: servers lie in Content-Type and URLs lie in
their extension, the magic bytes do not.

Used twice: the download layer stops reading a body whose first bytes are no image at all
(an HTML error page behind ``image/jpeg``), and the decoder only hands Pillow the formats
we accept, so a hostile file can never reach one of Pillow's rarer parsers.
"""

from __future__ import annotations

# Formats we decode. A .jpg URL serving PNG bytes is fine: the bytes decide, not the URL.
DECODED_FORMATS = frozenset({"JPEG", "PNG", "GIF", "WEBP", "BMP"})
SNIFF_BYTES = 16  # enough for every signature below

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG2000"),
    (b"\xff\x4f\xff\x51", "JPEG2000"),
    (b"8BPS", "PSD"),
    (b"\xff\x0a", "JPEGXL"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEGXL"),
)
_ISO_BMFF_BRANDS = {
    b"avif": "AVIF",
    b"avis": "AVIF",
    b"heic": "HEIC",
    b"heix": "HEIC",
    b"mif1": "HEIF",
    b"msf1": "HEIF",
}


def sniff_image_format(head: bytes) -> str | None:
    """Image format named by the leading bytes ('JPEG', 'PNG', ...), or None for non-images."""
    for magic, name in _SIGNATURES:
        if head.startswith(magic):
            if name == "BMP" and len(head) >= 14 and head[6:10] != b"\x00\x00\x00\x00":
                return None  # "BM" then non-zero reserved bytes: text that starts with BM
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp":
        return _ISO_BMFF_BRANDS.get(head[8:12])
    return None


def is_decodable_format(name: str | None) -> bool:
    return name in DECODED_FORMATS
