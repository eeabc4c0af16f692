from mmc4_assets.dedup.phash import dedup_in_document, hamming, url_duplicate_flags


def _flip(h: str, bits: int) -> str:
    return f"{int(h, 16) ^ ((1 << bits) - 1):016x}"


def test_hamming():
    assert hamming("ff00", "ff00") == 0
    assert hamming("0000000000000000", "000000000000001f") == 5


def test_threshold_boundary_five_is_duplicate_six_is_not():
    base = "a5a5a5a5a5a5a5a5"
    assert dedup_in_document([base, _flip(base, 5)], threshold=5) == [None, 0]
    assert dedup_in_document([base, _flip(base, 6)], threshold=5) == [None, None]


def test_first_copy_in_document_order_is_kept():
    a, b = "0000000000000000", "ffffffffffffffff"
    assert dedup_in_document([a, b, a, b, a]) == [None, None, 0, 1, 0]


def test_url_duplicate_flags():
    assert url_duplicate_flags(["u1", "u2", "u1"]) == {"u1": 1, "u2": 0}
