"""Sentence splitting: punkt (the default) against pysbd (the earlier splitter).

    .venv/bin/python benchmarks/sentence_split.py
    .venv/bin/python benchmarks/sentence_split.py --sizes 1,10,100,1000 --pysbd-max-kb 200

Prints one labelled JSON line per measurement:
* ``timing``: seconds to split one document of 1 KB to 1 MB, for each splitter and two
  shapes: ``lines`` (C4-shaped: the sample's paragraphs, one per line, repeated up to the
  size) and ``one_paragraph`` (the same text with no line break, the shape that made pysbd
  quadratic). pysbd is skipped above ``--pysbd-max-kb`` (its time grows with the square).
  ``per_kb_ms`` is the time per KB: flat means linear;
* ``worst_case``: punkt on adversarial text (``A. B. C. ...`` initials, ``a. a. a.``),
  100 KB and 200 KB (the raw_c4 cap): linear too, just more work per character;
* ``distance``: punkt against pysbd on the bundled sample's C4 documents: share of
  documents whose text_list is identical, mean absolute difference of sentence counts;
* ``parity``: punkt against NLTK's own PunktSentenceTokenizer with the same English
  parameters, on the sample and the adversarial texts (needs ``nltk``: the dev extra).

Text is the sample's C4 documents (English web prose written for the sample); the timing
is of the splitter alone, as raw_c4 runs it (``split_sentences``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, print_json  # noqa: E402
from mmc4_assets.sample.server import SAMPLE_DIR, SHARD_RELPATH  # noqa: E402
from mmc4_assets.text.sentences import split_sentences  # noqa: E402


def sample_texts() -> list[str]:
    texts = []
    with gzip.open(Path(SAMPLE_DIR) / SHARD_RELPATH, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict) and isinstance(doc.get("text"), str) and doc["text"].strip():
                texts.append(doc["text"])
    return texts


def document(paragraphs: list[str], size: int, one_paragraph: bool) -> str:
    sep = " " if one_paragraph else "\n"
    out, n, i = [], 0, 0
    while n < size:
        p = paragraphs[i % len(paragraphs)]
        out.append(p)
        n += len(p) + 1
        i += 1
    return sep.join(out)[:size]


def timed(text: str, splitter: str, repeats: int) -> tuple[float, int]:
    best, n = float("inf"), 0
    for _ in range(repeats):
        t = time.perf_counter()
        n = len(split_sentences(text, splitter=splitter))
        best = min(best, time.perf_counter() - t)
    return best, n


def nltk_split():
    try:
        from collections import defaultdict

        import punkt
        from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer
    except ImportError:
        return None
    model = punkt.load_model("english")
    params = PunktParameters()
    params.abbrev_types, params.collocations = set(model.abbrev_types), set(model.collocations)
    params.sent_starters, params.ortho_context = set(model.sent_starters), defaultdict(int, model.ortho_context)
    tok = PunktSentenceTokenizer(params).tokenize

    def split(text: str) -> list[str]:
        return [s.strip() for p in text.splitlines() if p.strip() for s in tok(p.strip()) if s.strip()]

    return split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,10,50,100,200,400,1000", help="document sizes in KB")
    ap.add_argument("--pysbd-max-kb", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print_json("machine", {"load_average_before": load_average()})
    texts = sample_texts()
    paragraphs = [p.strip() for t in texts for p in t.splitlines() if p.strip()]
    for splitter in ("punkt", "pysbd"):  # load the model / compile the rules outside the timings
        split_sentences(texts[0], splitter=splitter)

    for kb in [int(s) for s in args.sizes.split(",")]:
        for one_paragraph in (False, True):
            text = document(paragraphs, kb * 1000, one_paragraph)
            for splitter in ("punkt", "pysbd"):
                if splitter == "pysbd" and kb > args.pysbd_max_kb:
                    continue
                repeats = args.repeats if kb <= 100 or splitter == "punkt" else 1
                secs, n = timed(text, splitter, repeats)
                print_json(
                    "timing",
                    {
                        "splitter": splitter,
                        "shape": "one_paragraph" if one_paragraph else "lines",
                        "kb": kb,
                        "seconds": round(secs, 4),
                        "per_kb_ms": round(secs / kb * 1000, 3),
                        "sentences": n,
                    },
                )

    adversarial = {"initials": "A. B. C. D. E. F. ", "a_dot": "a. ", "ellipsis": "... "}
    for name, unit in adversarial.items():
        for kb in (100, 200):
            text = (unit * (kb * 1000 // len(unit) + 1))[: kb * 1000]
            secs, n = timed(text, "punkt", 1)
            print_json(
                "worst_case",
                {
                    "text": name,
                    "kb": kb,
                    "seconds": round(secs, 3),
                    "per_kb_ms": round(secs / kb * 1000, 3),
                    "sentences": n,
                },
            )

    same, diffs, n_punkt, n_pysbd = 0, [], 0, 0
    for t in texts:
        a, b = split_sentences(t), split_sentences(t, splitter="pysbd")
        same += a == b
        diffs.append(abs(len(a) - len(b)))
        n_punkt, n_pysbd = n_punkt + len(a), n_pysbd + len(b)
    print_json(
        "distance",
        {
            "what": "punkt vs pysbd on the sample",
            "documents": len(texts),
            "identical_text_list_pct": round(100 * same / len(texts), 1),
            "mean_abs_sentence_count_diff": round(statistics.mean(diffs), 3),
            "max_abs_sentence_count_diff": max(diffs),
            "sentences_punkt": n_punkt,
            "sentences_pysbd": n_pysbd,
        },
    )

    nltk = nltk_split()
    if nltk is None:
        print_json("parity", {"skipped": "nltk not installed (pip install -e .[dev])"})
    else:
        docs = texts + [(u * 2000) for u in adversarial.values()]
        same = sum(split_sentences(d) == nltk(d) for d in docs)
        print_json(
            "parity",
            {
                "what": "punkt vs NLTK PunktSentenceTokenizer, same English parameters",
                "documents": len(docs),
                "identical": same,
            },
        )
    print_json("machine", {"load_average_after": load_average()})


if __name__ == "__main__":
    main()
