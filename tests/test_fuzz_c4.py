"""Fuzz: generated C4 lines through the real parser and raw_c4's real parquet writers.

Every generated line must come out as a document or a quarantined row with a reason, and
nothing may raise. Lines are generated in batches inside one gzip shard per example, so
>= 10,000 lines cost a few seconds. Hypothesis drives a few structured lines per batch
(shrinkable) plus a seeded generator for the rest of the batch.
"""

from __future__ import annotations

import gzip
import io
import json
import random
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmc4_assets.defs.raw_c4 import QUARANTINE_SCHEMA, RAW_C4_SCHEMA
from mmc4_assets.pages.archives import PageRecord
from mmc4_assets.pages.raw_docs import document_rows, iter_c4_lines
from mmc4_assets.stats import StepStats
from mmc4_assets.storage import ShardStore
from mmc4_assets.text.url_filter import UrlFilter

BATCH = 200
EXAMPLES = 55
MAX_LINE = 32 * 1024  # small, so oversized lines are cheap to generate
URLS = [f"https://site{i}.test/post/{i}" for i in range(8)]
PAGES = {
    u: PageRecord(u, (f"https://cdn.test/{i}.jpg", "https://cdn.test/logo.png"), "warc") for i, u in enumerate(URLS[:6])
}
TEXTS = [
    "One sentence. Another one here.",
    "Word",
    "   ",
    "",
    "Ünïcödé text. 日本語の文。",
    "emoji \U0001f600 here. Next.",
    "tab\tand\x00nul. ok.",
    "a. " * 50,
]


def _escape_pieces(rng: random.Random) -> str:
    """JSON-string content with escapes: lone and paired surrogates, controls, quotes."""
    pieces = ["\\ud800", "\\udfff", "\\ud83d\\ude00", "\\u0000", "\\n", '\\"', "\\\\", "\\u00e9", "x", ". "]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 6)))


def _random_line(rng: random.Random) -> bytes:
    kind = rng.randrange(16)
    url = rng.choice(URLS + ["", "not a url", "http://[::1", "https://SITE0.test/post/0#frag"])
    text = rng.choice(TEXTS)
    if kind == 0:
        return json.dumps({"text": text, "timestamp": "2019-04-25T12:57:54Z", "url": url}).encode()
    if kind == 1:  # escapes spliced into a valid document
        escaped, plain, url = _escape_pieces(rng), text.replace('"', ""), rng.choice(URLS) + _escape_pieces(rng)
        return f'{{"text": "{escaped}{plain}", "timestamp": "t", "url": "{url}"}}'.encode()
    if kind == 2:  # a field missing or of the wrong type
        doc = {"text": text, "timestamp": "t", "url": url}
        key = rng.choice(list(doc))
        if rng.random() < 0.5:
            del doc[key]
        else:
            doc[key] = rng.choice([None, 1, 1.5, [], {}, True, ["x"]])
        return json.dumps(doc).encode()
    if kind == 3:  # valid JSON, not an object
        return rng.choice([b"[]", b"1", b'"text"', b"null", b"true", b"-0.0e5", b'[{"text": "a"}]'])
    if kind == 4:  # nesting, shallow to far past the interpreter's stack
        depth = rng.choice([1, 50, 5_000, 150_000])
        opener, closer = rng.choice([("[", "]"), ('{"a":', "}")])
        return (opener * depth + "1" + closer * depth).encode()
    if kind == 5:  # random bytes (a newline would split the line: excluded)
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 300))).replace(b"\n", b" ")
    if kind == 6:  # a valid document cut short
        raw = json.dumps({"text": text, "timestamp": "t", "url": url}).encode()
        return raw[: rng.randint(0, len(raw) - 1)]
    if kind == 7:
        return rng.choice([b"", b"   ", b"\t", b"\r"])
    if kind == 8:  # numbers past Python's int digit limit, NaN, Infinity
        return rng.choice(
            [
                b'{"text": "a", "timestamp": "t", "url": "u", "n": ' + b"9" * 5000 + b"}",
                b'{"text": NaN, "timestamp": "t", "url": "u"}',
                b"Infinity",
                b"1e99999",
            ]
        )
    if kind == 9:  # BOM, UTF-16, invalid UTF-8 inside strings
        doc = json.dumps({"text": text, "timestamp": "t", "url": url})
        return rng.choice(
            [
                b"\xef\xbb\xbf" + doc.encode(),
                doc.encode("utf-16")[:-1],
                doc.encode().replace(b"text", b"te\xffxt", 1),
                doc.encode().replace(b'"t"', b'"\xc3"', 1),
            ]
        )
    if kind == 10:  # duplicate keys, extra fields
        return (
            b'{"text": "a", "text": "'
            + text.encode()
            + b'", "timestamp": "t", "url": "'
            + url.encode()
            + b'", "extra": {"deep": [1, 2, {"x": null}]}}'
        )
    if kind == 11:  # longer than the line cap
        return json.dumps({"text": "Long. " * (MAX_LINE // 5), "timestamp": "t", "url": url}).encode()
    if kind == 12:  # control characters and odd whitespace between tokens
        return f'\x0c{{ "text" :\t"{text}" ,"timestamp":"t",\r"url":"{url}"}}\x0b'.encode()
    if kind == 13:  # huge but legal strings
        return json.dumps({"text": ("S. " * rng.randint(1, 200)), "timestamp": "t", "url": url}).encode()
    if kind == 14:  # mutated valid document: one byte flipped
        raw = bytearray(json.dumps({"text": text, "timestamp": "t", "url": url}).encode())
        raw[rng.randrange(len(raw))] = rng.randrange(256)
        return bytes(raw).replace(b"\n", b" ")
    return json.dumps({"text": text, "timestamp": 123, "url": url, "meta": None}).encode()


# structured lines hypothesis can shrink: arbitrary JSON values and arbitrary text fields
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12,
)
structured_line = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {
            "text": st.text(max_size=200),
            "timestamp": st.text(max_size=30),
            "url": st.sampled_from(URLS) | st.text(max_size=40),
        }
    ).map(lambda d: json.dumps(d, ensure_ascii=False).encode()),
    st.binary(max_size=200).map(lambda b: b.replace(b"\n", b"")),
)


def test_fuzzed_c4_lines_are_all_accounted_for(tmp_path):
    totals: Counter = Counter()
    store = ShardStore(tmp_path / "store")

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(head=st.lists(structured_line, max_size=12), seed=st.integers(0, 2**32 - 1))
    def run(head: list[bytes], seed: int) -> None:
        rng = random.Random(seed)
        lines = head + [_random_line(rng) for _ in range(BATCH - len(head))]
        shard = gzip.compress(b"\n".join(lines) + b"\n", compresslevel=1)
        docs, imgs = StepStats(), StepStats()
        with (
            store.table_writer("raw_c4_quarantine", "fuzz", QUARANTINE_SCHEMA) as q,
            store.table_writer("raw_c4", "fuzz", RAW_C4_SCHEMA) as out,
        ):
            for row in document_rows(
                iter_c4_lines(io.BytesIO(shard), max_line_bytes=MAX_LINE),
                PAGES,
                "fuzz",
                UrlFilter(),
                docs,
                imgs,
                q.append,
            ):
                out.append(row)
        n_docs, n_quarantined = out.rows, q.rows  # closed: everything flushed
        # read back: every line is a stored document or a stored quarantined row with a reason
        stored_docs = store.num_rows("raw_c4", "fuzz")
        quarantined = store.read_table("raw_c4_quarantine", "fuzz")
        assert stored_docs == n_docs and quarantined.height == n_quarantined
        assert stored_docs + quarantined.height == len(lines) == docs.seen
        assert quarantined["reason"].null_count() == 0
        assert set(quarantined["line_no"]) | set(store.read_table("raw_c4", "fuzz")["line_no"]) == set(
            range(len(lines))
        )
        totals["lines"] += len(lines)
        totals["documents"] += stored_docs
        totals.update(f"quarantined:{r}" for r in quarantined["reason"])

    run()
    print("\nfuzz:", dict(sorted(totals.items())))
    assert totals["lines"] >= 10_000
    assert totals["documents"] + sum(v for k, v in totals.items() if k.startswith("quarantined:")) == totals["lines"]
    # the generator reaches the interesting reasons
    for reason in ("invalid_unicode", "too_deep", "malformed_json", "missing_field", "oversized_line"):
        assert totals[f"quarantined:{reason}"] > 0, reason
