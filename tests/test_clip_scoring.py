"""The fast CLIP path gives the plain path's numbers, streams in document order, and caches per shard."""

import io

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from mmc4_assets.clip.encoder import ClipEncoder, ClipSpec, decode_rgb, resolve_precision
from mmc4_assets.clip.scoring import LRU, DocImages, ShardScorer, score_documents
from mmc4_assets.clip.shard import (
    CLIP_SCORES_SCHEMA,
    DigestSet,
    FetchedOrderError,
    ShardScoreStats,
    join_fetched,
    score_shard,
)
from mmc4_assets.stats import StepStats


@pytest.fixture(scope="module")
def encoder():
    return ClipEncoder(
        ClipSpec(
            model_name="mmc4-tiny-random",
            pretrained=None,
            device="cpu",
            batch_size=4,
            text_batch_size=5,
            fast_decode=False,
        )
    )


def _jpeg(w, h, seed, mode="RGB", fmt="JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(arr).resize((w, h))
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


BLOBS = {
    f"img{i}.jpg": _jpeg(w, h, i)
    for i, (w, h) in enumerate(
        [(800, 600), (300, 450), (224, 224), (225, 500), (640, 640), (151, 300), (799, 401), (500, 250)]
    )
}
BLOBS["gray.png"] = _jpeg(320, 240, 99, mode="L", fmt="PNG")


def test_fast_preprocessing_is_open_clips_transform(encoder):
    for name, data in BLOBS.items():
        want = encoder.preprocess(decode_rgb(data))
        got = encoder.prepare(data)
        assert got.dtype == np.uint8 and got.shape == (224, 224, 3), name
        x = torch.from_numpy(got.copy()).permute(2, 0, 1).float().div_(255.0)
        x = x.sub_(encoder._mean[0]).div_(encoder._std[0])
        torch.testing.assert_close(x, want, atol=0, rtol=0, msg=name)


def test_encoding_prepared_batches_matches_encode_images(encoder):
    images = [decode_rgb(d) for d in BLOBS.values()]
    want = encoder.encode_images(images)
    got = encoder.encode_prepared([encoder.prepare(d) for d in BLOBS.values()])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_streamlined_towers_compute_what_open_clip_computes(encoder):
    import open_clip

    assert encoder.streamlined_image_blocks and encoder.causal_text_blocks
    torch.manual_seed(encoder.spec.seed)
    pristine, _, _ = open_clip.create_model_and_transforms("mmc4-tiny-random", pretrained=None)
    pristine.eval()
    x = torch.randn(3, 3, 224, 224)
    tokens = encoder.tokenize(SENTENCES)
    with torch.inference_mode():
        torch.testing.assert_close(
            encoder.model.encode_image(x, normalize=True), pristine.encode_image(x, normalize=True), atol=2e-6, rtol=0
        )
        want = pristine.encode_text(tokens, normalize=True).numpy()
    np.testing.assert_allclose(encoder.encode_tokens(tokens), want, atol=2e-6)


def test_draft_decoding_stays_close_and_never_below_input_size():
    fast = ClipEncoder(ClipSpec(model_name="mmc4-tiny-random", pretrained=None, device="cpu", fast_decode=True))
    for name, data in BLOBS.items():
        exact = fast.preprocess(decode_rgb(data))
        got = fast.prepare(data)
        assert got.shape == (224, 224, 3)
        x = (torch.from_numpy(got.copy()).permute(2, 0, 1).float() / 255 - fast._mean[0]) / fast._std[0]
        # a reduced DCT scale is a slightly different low-pass filter, not another picture
        assert (x - exact).abs().mean() < 0.15, name


SENTENCES = [
    "A short one.",
    "",
    "Tomatoes ripen faster next to bananas, which give off ethylene gas.",
    "word " * 120,
    "Ünïcode, emoji 🍅 and punctuation!!!",
    "two words",
]


def test_sentences_cut_to_length_match_the_full_context(encoder):
    assert encoder.text_cut_to_length
    with torch.inference_mode():
        want = encoder.model.encode_text(encoder.tokenize(SENTENCES), normalize=True).numpy()
    got = encoder.encode_texts(SENTENCES)
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_precision_auto_is_fp32_on_cpus_without_native_bf16(monkeypatch):
    import mmc4_assets.clip.encoder as enc

    monkeypatch.setattr(enc, "_cpu_has_fast_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(enc, "_cpu_has_fast_bf16", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    assert resolve_precision("fp16", "cpu") == "fp16"
    with pytest.raises(ValueError):
        resolve_precision("int8", "cpu")


def _naive(doc: DocImages, encoder) -> np.ndarray:
    imgs = encoder.encode_images([decode_rgb(BLOBS[n]) for n in doc.image_names])
    with torch.inference_mode():
        txt = encoder.model.encode_text(encoder.tokenize(list(doc.text_list)), normalize=True).numpy()
    return imgs @ txt.T


def _docs(n_docs: int, seed: int = 0) -> list[DocImages]:
    rng = np.random.default_rng(seed)
    names = list(BLOBS)
    boiler = ["Share this:", "Click here to subscribe.", "All rights reserved."]
    docs = []
    for d in range(n_docs):
        text = [f"Sentence {d}.{j} about thing {rng.integers(0, 5)}." for j in range(rng.integers(1, 6))]
        text += list(rng.choice(boiler, rng.integers(0, 3)))
        docs.append(DocImages(f"s:{d}", text, list(rng.choice(names, rng.integers(1, 4)))))
    return docs


def test_scorer_matches_a_per_document_computation_and_encodes_each_sentence_once(encoder):
    docs = _docs(30)
    with ShardScorer(encoder, BLOBS.__getitem__, decode_workers=2, lookahead=1) as scorer:
        batches = [docs[i : i + 7] for i in range(0, len(docs), 7)]
        out = list(scorer.score((k, b) for k, b in enumerate(batches)))
    assert [k for k, _ in out] == list(range(len(batches)))
    got = [m for _, scored in out for m in scored.similarity_matrices]
    for doc, matrix in zip(docs, got):
        assert matrix.shape == (len(doc.image_names), len(doc.text_list))
        np.testing.assert_allclose(matrix, _naive(doc, encoder), atol=2e-5)
    distinct = {s for d in docs for s in d.text_list}
    assert sum(s.sentences_encoded for _, s in out) == len(distinct)  # shard-wide, not per batch
    assert sum(s.images_encoded for _, s in out) == len({n for d in docs for n in d.image_names})
    assert scorer.timings["encode_images"] > 0 and scorer.timings["encode_sentences"] > 0


def test_tiny_caches_still_give_the_same_numbers(encoder):
    docs = _docs(20, seed=1)
    with ShardScorer(encoder, BLOBS.__getitem__, sentence_cache_size=2, image_cache_size=1, lookahead=2) as scorer:
        out = list(scorer.score((k, docs[k : k + 3]) for k in range(0, 20, 3)))
    # every batch comes back, in order, with one matrix per document: a scorer yielding
    # nothing (or dropping a batch) must fail here, not pass an empty comparison
    assert [k for k, _ in out] == list(range(0, 20, 3))
    got = [m for _, s in out for m in s.similarity_matrices]
    assert len(got) == len(docs)
    for doc, matrix in zip(docs, got, strict=True):
        np.testing.assert_allclose(matrix, _naive(doc, encoder), atol=2e-5)
    one = score_documents(docs[:3], encoder, BLOBS.__getitem__)
    assert len(one.similarity_matrices) == 3
    for doc, matrix in zip(docs[:3], one.similarity_matrices, strict=True):
        np.testing.assert_allclose(matrix, _naive(doc, encoder), atol=2e-5)


def test_lru_forgets_the_least_recently_used():
    lru = LRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1
    lru.put("c", 3)
    assert lru.get("b") is None and lru.get("a") == 1 and len(lru) == 2


# -- streaming merge-join ------------------------------------------------------------------


def _raw(n_docs):
    return pl.DataFrame(
        {
            "doc_id": [f"s:{d}" for d in range(n_docs)],
            "url": [f"https://e.com/{d}" for d in range(n_docs)],
            "text_list": [[f"t{d}"] for d in range(n_docs)],
        }
    )


def _fetched(spec):
    """spec: (doc, image_index, status) in file order."""
    return pl.DataFrame(
        {
            "doc_id": [f"s:{d}" for d, _, _ in spec],
            "image_index": [i for _, i, _ in spec],
            "image_name": [f"{d}-{i}.jpg" for d, i, _ in spec],
            "raw_url": [f"u{d}/{i}" for d, i, _ in spec],
            "phash": ["0" * 16 for _ in spec],
            "status": [s for _, _, s in spec],
        },
        schema_overrides={"image_index": pl.Int32},
    )


def _batches(frame, size):
    return [frame.slice(i, size) for i in range(0, frame.height, size)]


@pytest.mark.parametrize("raw_size,fetched_size", [(1, 1), (3, 2), (4, 100), (100, 3)])
def test_join_fetched_equals_a_dict_join_for_any_batch_sizes(raw_size, fetched_size):
    rng = np.random.default_rng(raw_size * 10 + fetched_size)
    spec = []
    for d in range(25):
        for i in range(int(rng.integers(0, 5))):
            spec.append((d, i, str(rng.choice(["ok", "ok", "http_404"]))))
    raw, fetched = _raw(25), _fetched(spec)
    want = {}
    for d, i, s in spec:
        if s == "ok":
            want.setdefault(f"s:{d}", []).append(f"{d}-{i}.jpg")
    got, without = {}, 0
    for batch in join_fetched(_batches(raw, raw_size), _batches(fetched, fetched_size)):
        without += batch.num_without_images
        for doc in batch.doc_images():
            got[doc.doc_id] = doc.image_names
    assert got == want
    assert list(got) == [d for d in raw["doc_id"] if d in want]  # raw_c4's order
    assert without == 25 - len(want)


def test_join_fetched_refuses_rows_out_of_document_order():
    raw = _raw(6)
    swapped = _fetched([(0, 0, "ok"), (4, 0, "ok"), (1, 0, "ok"), (5, 0, "ok")])
    with pytest.raises(FetchedOrderError):
        list(join_fetched(_batches(raw, 2), _batches(swapped, 1)))
    unknown = _fetched([(0, 0, "ok"), (9, 0, "ok")])
    with pytest.raises(FetchedOrderError):
        list(join_fetched(_batches(raw, 2), _batches(unknown, 1)))


def test_score_shard_streams_rows_and_stores_each_image_once(encoder):
    names = list(BLOBS)
    spec = [(d, i, "ok") for d in range(12) for i in range(d % 3)]  # docs 0, 3, 6, 9 have no image
    fetched = _fetched(spec).with_columns(
        pl.Series("image_name", [names[(d + i) % 4] for d, i, _ in spec])
    )  # images shared across docs
    raw = _raw(12)
    stats, totals = StepStats(), ShardScoreStats()
    with ShardScorer(encoder, BLOBS.__getitem__) as scorer:
        out = list(score_shard(_batches(raw, 5), _batches(fetched, 4), scorer, stats, totals))
    scores = pl.concat([s for s, _ in out])
    features = pl.concat([f for _, f in out])
    assert scores.schema == pl.Schema(CLIP_SCORES_SCHEMA)
    assert scores["doc_id"].to_list() == [f"s:{d}" for d in range(12) if d % 3]
    assert stats.kept == 8 and stats.dropped["no_images_fetched"] == 4
    assert sorted(features["image_name"]) == sorted(set(fetched["image_name"]))  # once per shard
    assert totals.images_scored == features.height
    for row in scores.iter_rows(named=True):
        assert np.asarray(row["similarity_matrix"]).shape == (len(row["images"]), len(row["text_list"]))
        assert [im["image_index"] for im in row["images"]] == list(range(len(row["images"])))


def test_digest_set_remembers_across_many_adds():
    seen = DigestSet()
    rng = np.random.default_rng(0)
    universe = [f"{i:064x}.jpg" for i in range(3000)]
    added: set[str] = set()
    for _ in range(60):
        names = list(dict.fromkeys(rng.choice(universe, 80).tolist()))
        new = seen.add_new(names)
        assert new.tolist() == [n not in added for n in names]
        added.update(names)
    assert seen.size == len(added)
    assert len(seen._runs) <= 12


def test_compile_auto_leaves_tiny_models_eager_and_falls_back_when_compiling_fails(encoder, monkeypatch):
    import mmc4_assets.clip.encoder as enc

    assert not encoder.compiled  # 3.6M parameters: auto = off
    assert enc.resolve_compile("auto", torch.nn.Linear(8000, 8000))  # 64M parameters: auto = on
    assert enc.resolve_compile("on", encoder.model) and not enc.resolve_compile("off", encoder.model)
    with pytest.raises(ValueError):
        enc.resolve_compile("sometimes", encoder.model)

    def broken_compile(fn, **kwargs):
        def run(*a, **k):
            raise RuntimeError("no C++ compiler")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    wrapped = enc._CompiledOrEager(encoder.model.encode_image, "image tower")
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(wrapped(x, normalize=True), encoder.model.encode_image(x, normalize=True))
    assert wrapped.failed
