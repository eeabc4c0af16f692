"""A shard run launched the way the UI launches it, against the in-process ``mmc4-sample`` CLI.

The UI's Materialize button submits a run to the instance; its run launcher
(``DefaultRunLauncher``) starts ``dagster api execute_run`` in a new process, which runs the
job with the job's executor. ``dagster job launch`` takes the same path, so this script times:

* ``cli``:    ``mmc4-sample`` (``execute_in_process``), the time it prints and its wall time;
* ``launch``: ``dagster job launch -j mmc4_shard_job`` with the sample partition, from the
  command's start to the run's end, and the run's own start -> end from its record.

Each side gets its own temporary DAGSTER_HOME (default run coordinator: no daemon needed) and
storage root. ``--executor`` sets MMC4_EXECUTOR for the launched run (default: the profile's
own, in_process for the sample); ``--executor multiprocess`` reproduces the old behaviour.

    python benchmarks/ui_launch.py [--executor multiprocess] [--skip-cli]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE_SHARD = "c4-sample.00000-of-00001"
INSTANCE_YAML = (
    "telemetry:\n  enabled: false\n"
    "run_coordinator:\n  module: dagster._core.run_coordinator\n  class: DefaultRunCoordinator\n"
)


def _env(home: Path, storage: Path, executor: str | None) -> dict[str, str]:
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "MMC4_STORAGE_ROOT": str(storage),
        "MMC4_PROFILE": "sample",
        "PYTHONPATH": str(REPO),
    }
    env.pop("MMC4_EXECUTOR", None)
    if executor:
        env["MMC4_EXECUTOR"] = executor
    return env


def run_cli(tmp: Path) -> dict[str, float]:
    home, storage = tmp / "cli_home", tmp / "cli_storage"
    home.mkdir()
    (home / "dagster.yaml").write_text(INSTANCE_YAML)
    started = time.perf_counter()
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from mmc4_assets.cli import sample_main; sys.exit(sample_main(['--log-level', 'WARNING']))",
        ],
        cwd=REPO,
        env=_env(home, storage, None),
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if out.returncode:
        raise SystemExit(f"mmc4-sample failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    printed = float(re.search(r"succeeded in ([\d.]+)s", out.stdout).group(1))
    return {"cli_run_s": printed, "cli_wall_s": round(wall, 1)}


def run_launch(tmp: Path, executor: str | None, timeout: float) -> dict[str, float | str]:
    import dagster as dg

    home, storage = tmp / "launch_home", tmp / "launch_storage"
    home.mkdir()
    (home / "dagster.yaml").write_text(INSTANCE_YAML)
    env = _env(home, storage, executor)
    os.environ["DAGSTER_HOME"] = str(home)
    instance = dg.DagsterInstance.get()
    instance.add_dynamic_partitions("shards", [SAMPLE_SHARD])
    started = time.perf_counter()
    launch = subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "job",
            "launch",
            "-w",
            "workspace.yaml",
            "-j",
            "mmc4_shard_job",
            "--tags",
            json.dumps({"dagster/partition": SAMPLE_SHARD}),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    launched = time.perf_counter() - started
    if launch.returncode:
        raise SystemExit(f"dagster job launch failed:\n{launch.stdout[-3000:]}\n{launch.stderr[-3000:]}")
    while True:
        runs = instance.get_run_records(limit=1)
        if runs and runs[0].dagster_run.is_finished:
            break
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"run not finished after {timeout:.0f}s")
        time.sleep(1.0)
    wall = time.perf_counter() - started
    record = runs[0]
    if record.dagster_run.status != dg.DagsterRunStatus.SUCCESS:
        for event in instance.all_logs(record.dagster_run.run_id):
            kinds = ("RUN_FAILURE", "STEP_FAILURE", "ENGINE_EVENT")
            if event.is_dagster_event and event.dagster_event.event_type_value in kinds:
                print(event.message[:400], file=sys.stderr)
    steps = {e.step_key for e in instance.all_logs(record.dagster_run.run_id, of_type=dg.DagsterEventType.STEP_START)}
    return {
        "launch_status": record.dagster_run.status.value,
        "launch_executor": executor or "profile default",
        "launch_command_s": round(launched, 1),
        "launch_run_s": round(record.end_time - record.start_time, 1) if record.start_time else None,
        "launch_wall_s": round(wall, 1),
        "launch_steps": len(steps),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executor", default=None, help="MMC4_EXECUTOR for the launched run")
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    result: dict[str, object] = {"load_before": load_average()}
    with tempfile.TemporaryDirectory(prefix="mmc4-ui-launch-") as tmp:
        if not args.skip_cli:
            result.update(run_cli(Path(tmp)))
        result.update(run_launch(Path(tmp), args.executor, args.timeout))
    result["load_after"] = load_average()
    if "cli_run_s" in result:
        result["launch_wall_over_cli_wall"] = round(result["launch_wall_s"] / result["cli_wall_s"], 2)
    print(json.dumps(result, indent=1))
    return 0 if result["launch_status"] == "SUCCESS" else 1


if __name__ == "__main__":
    sys.exit(main())
