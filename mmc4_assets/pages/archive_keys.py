"""Archive partition keys: a safe, reversible name for each WARC/WAT file.

The key of an archive is its path relative to the directory part of the pattern that found
it (``page_archives`` entries are paths or globs), percent-encoded, with ``/`` written as
``~``::

    s3://commoncrawl/crawl-data/CC-MAIN-2019-18/segments/*/wat/*.wat.gz   (pattern)
    s3://commoncrawl/crawl-data/CC-MAIN-2019-18/segments/155.8/wat/CC-MAIN-x-00000.warc.wat.gz
      -> key  155.8~wat~CC-MAIN-x-00000.warc.wat.gz

Keys hold only ``[A-Za-z0-9._~%-]``: no ``/`` (so a key is one storage path component),
nothing Dagster refuses in a partition key. ``~`` and ``%`` inside a name are
percent-encoded, so :func:`archive_relpath` inverts :func:`archive_key` exactly.
"""

from __future__ import annotations

import fnmatch
from urllib.parse import quote, unquote

GLOB_CHARS = "*?["


def archive_key(relpath: str) -> str:
    """Relative path -> partition key (reversible)."""
    rel = relpath.strip("/")
    if not rel or "\\" in rel or any(part in ("", ".", "..") for part in rel.split("/")):
        raise ValueError(f"not a relative archive path: {relpath!r}")
    return quote(rel, safe="/").replace("~", "%7E").replace("/", "~")


def archive_relpath(key: str) -> str:
    """Partition key -> relative path; refuses keys that could leave their root."""
    rel = unquote(key.replace("~", "/"))
    if not key or any(part in ("", ".", "..") for part in rel.split("/")) or "\\" in rel:
        raise ValueError(f"invalid archive key {key!r}")
    return rel


def pattern_root(pattern: str) -> str:
    """The directory part of a path or glob: everything before the first component with a glob
    character; for a plain file path, its parent directory."""
    parts = pattern.rstrip("/").split("/")
    for i, part in enumerate(parts):
        if any(c in part for c in GLOB_CHARS):
            return "/".join(parts[:i])
    return "/".join(parts[:-1])


def key_for(path: str, pattern: str) -> str:
    root = pattern_root(pattern)
    if root and not path.startswith(root + "/"):
        raise ValueError(f"{path} is not under {root}")
    return archive_key(path[len(root) + 1 :] if root else path)


def matches(path: str, pattern: str) -> bool:
    return path == pattern or (any(c in pattern for c in GLOB_CHARS) and fnmatch.fnmatchcase(path, pattern))
