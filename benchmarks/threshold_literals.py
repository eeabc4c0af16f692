"""Where each MMC4 threshold value is written as a number in code (comments/strings excluded)."""

import io
import pathlib
import sys
import tokenize

VALUES = {
    "0.15": "min_similarity",
    "150": "min_side",
    "2.0": "max_aspect",
    "0.5": "1/max_aspect, face",
    "800": "max_side",
    "5": "phash_threshold",
    "0.1": "nsfw_threshold",
    "10": "max duplicates / core phash",
    "0.25": "core min_sim",
    "0.75": "core well-matched share",
    "0.8": "near-dup docs",
}
root = pathlib.Path(sys.argv[1])
skip = sys.argv[2:]
hits = {v: [] for v in VALUES}
for p in sorted(root.rglob("*.py")):
    if any(s in str(p) for s in skip):
        continue
    lines = p.read_text().splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(p.read_text()).readline):
        if tok.type == tokenize.NUMBER:
            v = tok.string.replace("_", "")
            v = {"2.": "2.0", ".5": "0.5"}.get(v, v)
            if v in hits:
                hits[v].append(f"{p}:{tok.start[0]}: {lines[tok.start[0] - 1].strip()[:110]}")
for v, where in hits.items():
    print(f"## {v} ({VALUES[v]}): {len(where)} numeric literals")
    for w in where:
        print("   ", w)
