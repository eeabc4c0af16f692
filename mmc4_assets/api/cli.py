"""``python -m mmc4_assets.api`` (or ``mmc4-api``): serve the read API; ``hash-token`` makes tokens."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from mmc4_assets.api.auth import DEFAULT_ITERATIONS, TokenFileError, hash_token, load_token_file, new_token
from mmc4_assets.storage.settings import storage_settings


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["hash-token"]:
        return hash_token_main(argv[1:])
    if argv[:1] == ["serve"]:
        argv = argv[1:]
    return serve_main(argv)


def serve_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mmc4_assets.api",
        description="Serve GET /datasets/mmc4 over the shards published under STORAGE_ROOT/published.",
        epilog="Make a token: python -m mmc4_assets.api hash-token --name NAME --tokens-file FILE",
    )
    parser.add_argument(
        "--storage-root",
        default=None,
        help="a directory or s3://bucket/prefix (default: $MMC4_STORAGE_ROOT or ./storage)",
    )
    parser.add_argument(
        "--tokens-file", default=None, help="JSON or TOML: name -> pbkdf2_sha256 hash (default: $MMC4_API_TOKENS)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--cache-dir", default=None, help="local directory for per-shard sidecars (default: ~/.cache/mmc4-assets/api)"
    )
    parser.add_argument(
        "--index-ttl",
        type=float,
        default=10.0,
        help="seconds between manifest listings; new shards show up within this",
    )
    parser.add_argument("--rate-limit", type=float, default=None, help="requests per second per token")
    parser.add_argument("--burst", type=int, default=None, help="bucket size for --rate-limit")
    parser.add_argument(
        "--max-auth-failures",
        type=int,
        default=10,
        help="failed token attempts a client may make at once before 429 (then --auth-failure-rate)",
    )
    parser.add_argument(
        "--auth-failure-rate",
        type=float,
        default=0.2,
        help="failed attempts per second a client regains after --max-auth-failures",
    )
    parser.add_argument(
        "--warm",
        action="store_true",
        help="build every shard's sidecar in the background (first filtered queries are fast)",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)

    storage = storage_settings(args.storage_root)  # root and MMC4_S3_* settings, as the pipeline's
    tokens_file = args.tokens_file or os.environ.get("MMC4_API_TOKENS")
    if not tokens_file:
        parser.error("--tokens-file (or $MMC4_API_TOKENS) is required; make one with hash-token")

    import uvicorn

    from mmc4_assets.api.app import Settings, create_app

    try:
        app = create_app(
            Settings(
                storage_root=storage.root,
                storage_options=storage.storage_options,
                tokens_file=tokens_file,
                cache_dir=args.cache_dir,
                index_ttl=args.index_ttl,
                rate_limit=args.rate_limit,
                burst=args.burst,
                warm=args.warm,
                max_auth_failures=args.max_auth_failures,
                auth_failure_rate=args.auth_failure_rate,
            )
        )
    except TokenFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def hash_token_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mmc4_assets.api hash-token",
        description="Make a token (or hash one from stdin) and print its tokens-file line. "
        "The token is shown once, on stderr; only its salted hash is stored.",
    )
    parser.add_argument("--name", required=True, help="who the token is for (shown in logs and rate limits)")
    parser.add_argument("--token-stdin", action="store_true", help="hash the token read from stdin")
    parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS)
    parser.add_argument(
        "--tokens-file", default=None, help="also add (or replace) the entry in this JSON file, created mode 600"
    )
    args = parser.parse_args(argv)
    if args.iterations < 1:
        parser.error("--iterations must be >= 1")

    token = sys.stdin.readline().strip() if args.token_stdin else new_token()
    if not token:
        parser.error("empty token on stdin")
    encoded = hash_token(token, args.iterations)
    if args.tokens_file:
        path = Path(args.tokens_file)
        data: dict[str, str] = {}
        if path.exists():
            if path.suffix == ".toml":
                parser.error("--tokens-file edits JSON files; add the line below to the TOML file by hand")
            try:
                load_token_file(path)  # refuse to rewrite a file that holds something else
                data = json.loads(path.read_text())
            except (TokenFileError, ValueError) as exc:
                parser.error(str(exc))
        existed = args.name in data
        data[args.name] = encoded
        tmp = path.with_name(f".tmp-{path.name}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, path)
        print(f"{'replaced' if existed else 'added'} {args.name!r} in {path}", file=sys.stderr)
    print(json.dumps({args.name: encoded})[1:-1])
    if not args.token_stdin:
        print(f"token for {args.name} (shown once): {token}", file=sys.stderr)
    return 0
