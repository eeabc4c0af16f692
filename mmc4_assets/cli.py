"""Command-line entry points: run the bundled sample, manage shard partitions."""

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
        # the repository's dagster_home/ when run from a checkout, so `dagster dev` shows the run
        home = str(Path.cwd() / "dagster_home")
        os.environ["DAGSTER_HOME"] = home
    Path(home).mkdir(parents=True, exist_ok=True)
    return dg.DagsterInstance.get()


def sample_main(argv: list[str] | None = None) -> int:
    """Materialize all six assets and their checks for the bundled sample shard."""
    parser = argparse.ArgumentParser(prog="mmc4-sample", description=sample_main.__doc__)
    parser.add_argument("--storage-root", default=None,
                        help="where outputs go (default: $MMC4_STORAGE_ROOT or ./storage)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    if args.storage_root:
        root = args.storage_root
        os.environ["MMC4_STORAGE_ROOT"] = root if "://" in root else str(Path(root).resolve())
    os.environ.setdefault("MMC4_PROFILE", "sample")

    from mmc4_assets.definitions import defs
    from mmc4_assets.defs.partitions import shards
    from mmc4_assets.defs.resources import default_storage_root
    from mmc4_assets.publish.mmc4_format import shard_filename
    from mmc4_assets.storage import ShardStore

    instance = _instance()
    instance.add_dynamic_partitions(shards.name, [SAMPLE_SHARD])
    started = time.perf_counter()
    d = defs()
    # INFO keeps the stage logs (page records found, progress) without Dagster's step-event DEBUG lines
    run_config = {"loggers": {"console": {"config": {"log_level": args.log_level}}}}
    # what the daemon does for a crawl: the shard's run, a corpus update (the sensor batches
    # shards; here a batch of one), then publishing from the updated corpus state
    results = []
    for name, partition in (("mmc4_shard_job", SAMPLE_SHARD), ("corpus_update_job", None),
                            ("mmc4_publish_job", SAMPLE_SHARD)):
        result = d.resolve_job_def(name).execute_in_process(
            instance=instance, partition_key=partition, run_config=run_config, raise_on_error=False)
        results.append(result)
        if not result.success:
            print(f"sample run {result.run_id} ({name}) FAILED after {time.perf_counter() - started:.1f}s; "
                  "see `dagster dev` or the log above", file=sys.stderr)
            return 1
    elapsed = time.perf_counter() - started
    print(f"\nsample runs {', '.join(r.run_id[:8] for r in results)} succeeded in {elapsed:.1f}s")
    for mat in (m for r in results for m in r.get_asset_materialization_events()):
        md = mat.step_materialization_data.materialization.metadata
        key = mat.asset_key.to_user_string()
        counts = ", ".join(f"{k}={md[k].value}" for k in ("num_docs", "num_candidates", "num_ok", "num_images")
                           if k in md)
        print(f"  {key:18s} {counts}")
    for check in (c for r in results for c in r.get_asset_check_evaluations()):
        print(f"  check {check.check_name}: {'passed' if check.passed else 'FAILED'}")
    store = ShardStore(default_storage_root())
    print(f"\npublished shard: {store.uri('published', shard_filename(SAMPLE_SHARD))}")
    print(f"dagster home:    {os.environ['DAGSTER_HOME']}")
    print(f"open the UI:     DAGSTER_HOME={os.environ['DAGSTER_HOME']} .venv/bin/dagster dev -w workspace.yaml"
          "  ->  http://127.0.0.1:3000")
    return 0


def shards_main(argv: list[str] | None = None) -> int:
    """List, add or discover shard partitions in the Dagster instance ($DAGSTER_HOME)."""
    parser = argparse.ArgumentParser(prog="mmc4-shards", description=shards_main.__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="registered shard partitions")
    add = sub.add_parser("add", help="register shard keys by hand")
    add.add_argument("keys", nargs="+")
    sub.add_parser("discover", help="register every shard file under the configured source root")
    args = parser.parse_args(argv)

    from mmc4_assets.defs.partitions import shards

    instance = _instance()
    known = instance.get_dynamic_partitions(shards.name)
    if args.cmd == "list":
        print("\n".join(known))
        return 0
    if args.cmd == "add":
        keys = args.keys
    else:
        from mmc4_assets.definitions import defs

        # resources bound with EnvVar fields must be initialised to read their values
        keys = defs().resources["source"].process_config_and_initialize().list_shards()
    new = [k for k in keys if k not in set(known)]
    if new:
        instance.add_dynamic_partitions(shards.name, new)
    print(f"registered {len(new)} new shard partitions ({len(known) + len(new)} total)")
    return 0
