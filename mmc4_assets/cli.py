"""Command-line entry points: run the bundled sample, manage shard and archive partitions."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

SAMPLE_SHARD = "c4-sample.00000-of-00001"


def _instance():
    import dagster as dg

    home = os.environ.get("DAGSTER_HOME")
    if not home:
        # the repository's dagster_home/ when run from a checkout, so `dg dev` shows the run
        home = str(Path.cwd() / "dagster_home")
        os.environ["DAGSTER_HOME"] = home
    Path(home).mkdir(parents=True, exist_ok=True)
    return dg.DagsterInstance.get()


def sample_main(argv: list[str] | None = None) -> int:
    """Materialize every asset and check for the bundled sample shard, in this process."""
    parser = argparse.ArgumentParser(prog="mmc4-sample", description=sample_main.__doc__)
    parser.add_argument(
        "--storage-root", default=None, help="where outputs go (default: $MMC4_STORAGE_ROOT or ./storage)"
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    if args.storage_root:
        from mmc4_assets.storage import resolve_root

        # the code location's resources read it, as for `dagster dev`
        os.environ["MMC4_STORAGE_ROOT"] = resolve_root(args.storage_root)
    os.environ.setdefault("MMC4_PROFILE", "sample")

    from mmc4_assets.definitions import defs
    from mmc4_assets.defs.partitions import archives, shards
    from mmc4_assets.publish.mmc4_format import shard_filename
    from mmc4_assets.storage import open_store

    instance = _instance()
    instance.add_dynamic_partitions(shards.name, [SAMPLE_SHARD])
    started = time.perf_counter()
    d = defs()
    # INFO keeps the stage logs (page records found, progress) without Dagster's step-event DEBUG lines
    run_config = {"loggers": {"console": {"config": {"log_level": args.log_level}}}}
    # what a deployment does for a crawl: each archive read once, the page join, the shard's
    # run, a corpus update (the sensor batches shards; here a batch of one), then publishing
    archive_keys = list(d.resources["source"].process_config_and_initialize().archive_keys())
    instance.add_dynamic_partitions(archives.name, archive_keys)
    steps = [("page_records_job", key) for key in archive_keys] + [
        ("shard_pages_job", SAMPLE_SHARD),
        ("mmc4_shard_job", SAMPLE_SHARD),
        ("corpus_update_job", None),
        ("mmc4_publish_job", SAMPLE_SHARD),
    ]
    results = []
    for name, partition in steps:
        result = d.resolve_job_def(name).execute_in_process(
            instance=instance, partition_key=partition, run_config=run_config, raise_on_error=False
        )
        results.append(result)
        if not result.success:
            print(
                f"sample run {result.run_id} ({name}) FAILED after {time.perf_counter() - started:.1f}s; "
                "see `dg dev` or the log above",
                file=sys.stderr,
            )
            return 1
    elapsed = time.perf_counter() - started
    print(f"\nsample runs {', '.join(r.run_id[:8] for r in results)} succeeded in {elapsed:.1f}s")
    for mat in (m for r in results for m in r.get_asset_materialization_events()):
        md = mat.step_materialization_data.materialization.metadata
        key = mat.asset_key.to_user_string()
        counts = ", ".join(
            f"{k}={md[k].value}"
            for k in ("num_docs", "num_candidates", "num_ok", "num_images", "num_records", "num_pages")
            if k in md
        )
        print(f"  {key:18s} {counts}")
    for check in (c for r in results for c in r.get_asset_check_evaluations()):
        print(f"  check {check.check_name}: {'passed' if check.passed else 'FAILED'}")
    store = open_store()  # the root and MMC4_S3_* settings the run's resources used
    print(f"\npublished shard: {store.uri('published', shard_filename(SAMPLE_SHARD))}")
    print(f"dagster home:    {os.environ['DAGSTER_HOME']}")
    print(f"open the UI:     DAGSTER_HOME={os.environ['DAGSTER_HOME']} .venv/bin/dg dev  ->  http://127.0.0.1:3000")
    return 0


def shards_main(argv: list[str] | None = None) -> int:
    """List, add or discover shard partitions in the Dagster instance ($DAGSTER_HOME)."""
    parser = argparse.ArgumentParser(prog="mmc4-shards", description=shards_main.__doc__)
    parser.add_argument(
        "--source-root",
        default=None,
        help="where {key}.json.gz shard files live, local or s3:// (default: the profile's "
        "source: $MMC4_SHARDS_ROOT, else the bundled sample's folder)",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="registered shard partitions")
    add = sub.add_parser("add", help="register shard keys by hand (each must have its file under the source root)")
    add.add_argument("keys", nargs="+")
    add.add_argument("--force", action="store_true", help="register keys whose file is missing")
    sub.add_parser("discover", help="register every shard file under the source root")
    args = parser.parse_args(argv)
    if args.source_root:
        root = args.source_root
        os.environ["MMC4_SHARDS_ROOT"] = root if "://" in root else str(Path(root).resolve())

    from mmc4_assets.defs.partitions import shards

    instance = _instance()
    known = instance.get_dynamic_partitions(shards.name)
    if args.cmd == "list":
        print("\n".join(known))
        return 0

    from mmc4_assets.definitions import defs

    # resources bound with EnvVar fields must be initialised to read their values
    source = defs().resources["source"].process_config_and_initialize()
    if args.cmd == "add":
        keys = args.keys
        missing = [k for k in keys if not source.shard_path(k).exists()]
        if missing and not args.force:
            print(
                f"no shard file under {source.shards_root} for: {', '.join(missing)} "
                "(expected {key}.json.gz; --force registers them anyway)",
                file=sys.stderr,
            )
            return 2
    else:
        keys = source.list_shards()
    new = [k for k in keys if k not in set(known)]
    if new:
        instance.add_dynamic_partitions(shards.name, new)
    print(f"registered {len(new)} new shard partitions ({len(known) + len(new)} total) from {source.shards_root}")
    return 0


def archives_main(argv: list[str] | None = None) -> int:
    """List, add or discover page-archive partitions (one per WARC/WAT file) in the Dagster instance.

    A key is the file's path relative to the directory part of the page_archives pattern that
    finds it, with "/" written as "~" (see docs/pages.md); `path KEY` prints the file of a key.
    """
    parser = argparse.ArgumentParser(prog="mmc4-archives", description=archives_main.__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="registered archive partitions")
    add = sub.add_parser("add", help="register archive keys by hand")
    add.add_argument("keys", nargs="+")
    sub.add_parser("discover", help="register every file the configured page_archives patterns match")
    path = sub.add_parser("path", help="the file an archive key names")
    path.add_argument("key")
    args = parser.parse_args(argv)

    from mmc4_assets.defs.partitions import archives
    from mmc4_assets.pages.archive_keys import archive_relpath

    instance = _instance()
    known = instance.get_dynamic_partitions(archives.name)
    if args.cmd == "list":
        print("\n".join(known))
        return 0
    if args.cmd in ("discover", "path"):
        from mmc4_assets.definitions import defs

        source = defs().resources["source"].process_config_and_initialize()
        if args.cmd == "path":
            print(source.archive_path(args.key))
            return 0
        keys = list(source.archive_keys())
    else:
        keys = args.keys
        for key in keys:
            archive_relpath(key)  # refuses keys that are not archive keys (ValueError names it)
    new = [k for k in keys if k not in set(known)]
    if new:
        instance.add_dynamic_partitions(archives.name, new)
    print(f"registered {len(new)} new archive partitions ({len(known) + len(new)} total)")
    return 0
