import gzip
import json
from collections import defaultdict
from pathlib import Path

import pytest

from mmc4_assets.text.sentences import split_sentences
from mmc4_assets.text.url_filter import UrlFilter

TEXT = "Dr. Smith grows tomatoes, e.g. Roma ones. Do they need sun?\nYes! Lots of it."
TRICKY = [
    "Dr. Smith went to Washington D.C. on Jan. 5. He met Mr. Jones at 3 p.m. and left.",
    "The U.S. economy grew 2.5 per cent. Prices rose, i.e. inflation. Then what?",
    'He said "Stop." Then he left. (See Fig. 3.) It was late... Really late!',
    "Call 555-1234 now!!! Offer ends 12/31. St. Louis, Mo. is nice. J. R. R. Tolkien wrote it.",
    "Version 1.2.3 is out. Visit www.example.com. E-mail: a.b@c.com. No. 5 is gone.",
    "“Quoted.” Next sentence. ‘Single.’ And another one? Yes.",
]


def test_sentences_follow_punkt_and_paragraphs():
    # NLTK's English punkt knows "Dr." but not "e.g." (MMC4's text_list has the same split)
    assert split_sentences(TEXT) == [
        "Dr. Smith grows tomatoes, e.g.",
        "Roma ones.",
        "Do they need sun?",
        "Yes!",
        "Lots of it.",
    ]


def test_pysbd_stays_available_as_a_named_splitter():
    assert split_sentences(TEXT, splitter="pysbd") == [
        "Dr. Smith grows tomatoes, e.g. Roma ones.",
        "Do they need sun?",
        "Yes!",
        "Lots of it.",
    ]
    with pytest.raises(ValueError, match="unknown sentence splitter"):
        split_sentences(TEXT, splitter="spacy")


def test_punkt_splits_like_nltks_punkt_with_the_same_english_parameters():
    nltk_punkt = pytest.importorskip("nltk.tokenize.punkt")
    import punkt

    model = punkt.load_model("english")
    params = nltk_punkt.PunktParameters()
    params.abbrev_types, params.collocations = set(model.abbrev_types), set(model.collocations)
    params.sent_starters, params.ortho_context = set(model.sent_starters), defaultdict(int, model.ortho_context)
    nltk_split = nltk_punkt.PunktSentenceTokenizer(params).tokenize
    sample = Path(__file__).parents[1] / "mmc4_assets/sample/data/c4/c4-sample.00000-of-00001.json.gz"
    texts = []
    with gzip.open(sample, "rt") as lines:
        for line in lines:
            try:
                texts.append(json.loads(line)["text"])
            except (ValueError, KeyError, TypeError):
                pass
    paragraphs = [p.strip() for t in TRICKY + texts for p in t.splitlines() if p.strip()]
    assert len(paragraphs) > 100
    for p in paragraphs:
        assert split_sentences(p) == [s.strip() for s in nltk_split(p) if s.strip()], p


def test_sentences_skip_blank_paragraphs():
    assert split_sentences("\n\n  \nOne line only\n\n") == ["One line only"]
    assert split_sentences("") == []


def test_url_filter_mmc4_rules():
    f = UrlFilter()
    assert f.reason("https://a.test/img/photo.jpg") is None
    assert f.reason("https://a.test/img/PHOTO.JPEG?w=600") is None
    assert f.reason("https://a.test/img/pic.png#x") is None
    assert f.reason("https://a.test/img/anim.gif") == "bad_extension"
    assert f.reason("https://a.test/img/photo.webp") == "bad_extension"
    assert f.reason("https://a.test/img/noext") == "bad_extension"
    assert f.reason("https://a.test/brand/Logo-main.png") == "keyword"
    for word in ("button", "icon", "plugin", "widget"):
        assert f.reason(f"https://a.test/{word}s/x.jpg") == "keyword"
    assert f.reason("ftp://a.test/x.jpg") == "invalid_url"
    assert f.reason("/relative/x.jpg") == "invalid_url"


def test_url_filter_is_configurable():
    f = UrlFilter(extensions=("webp",), blocked_keywords=())
    assert f.reason("https://a.test/logo.webp") is None
    assert f.reason("https://a.test/a.jpg") == "bad_extension"
