from mmc4_assets.text.sentences import split_sentences
from mmc4_assets.text.url_filter import UrlFilter


def test_sentences_respect_abbreviations_and_paragraphs():
    text = "Dr. Smith grows tomatoes, e.g. Roma ones. Do they need sun?\nYes! Lots of it."
    assert split_sentences(text) == [
        "Dr. Smith grows tomatoes, e.g. Roma ones.", "Do they need sun?", "Yes!", "Lots of it."]


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
