"""Screenshots of the UI a user sees, taken offline with Debian's chromium; also times a UI launch.

    python docs/screenshots.py [--out docs/screenshots] [--keep]

What it does, on temporary DAGSTER_HOME and storage root (nothing of the checkout is touched):

1. Two shards: the bundled sample, and ``c4-sample.00004-of-00005``, a copy whose pages
   (rewritten from the sample's WARC) point at images that do not exist: its fetch success
   rate is 0, so the blocking check ``fetched_images_match_raw_c4`` fails on that partition.
2. Starts ``dg dev`` (falls back to ``dagster dev`` if dg is missing) in its own process group,
   with MMC4_SHARDS_ROOT / MMC4_PAGE_ARCHIVES pointing at both shards.
3. Launches ``mmc4_shard_job`` for each shard through the webserver's GraphQL ``launchRun``
   (the UI's path: queued, dequeued by the daemon, run by the run launcher) and times the
   sample's run; then times ``mmc4-sample`` (in-process CLI) on its own root, same machine.
4. Asks GraphQL for the check's executions (each shows its partition).
5. Starts ``mmc4-api`` on the storage root, then takes screenshots with chromium, all hosts
   but 127.0.0.1 unresolvable (``--host-resolver-rules``), so every page renders offline:
   lineage, an asset's partitions, the failed check, its Data Docs page, the API's /docs.
6. Ends the dev server's and the API's process groups.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SAMPLE = "c4-sample.00000-of-00001"
BROKEN = "c4-sample.00004-of-00005"
FAILING_CHECK = ("fetched_images", "fetched_images_match_raw_c4")
OFFLINE = "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def broken_copy(shards: Path, pages: Path) -> Path:
    """The sample shard under another name, its page URLs on a host of their own, images missing."""
    from warcio.archiveiterator import ArchiveIterator
    from warcio.warcwriter import WARCWriter

    from mmc4_assets.sample.server import sample_page_archives, sample_shard_path

    with gzip.open(sample_shard_path(), "rt") as f:
        lines = f.read().splitlines()
    out = []
    for line in lines:
        try:
            doc = json.loads(line)
        except ValueError:
            out.append(line)
            continue
        if isinstance(doc, dict) and isinstance(doc.get("url"), str):
            doc["url"] = doc["url"].replace("://", "://broken.", 1)
        out.append(json.dumps(doc) if isinstance(doc, dict) else line)
    with gzip.open(shards / f"{BROKEN}.json.gz", "wt") as f:
        f.write("\n".join(out) + "\n")
    warc = next(p for p in sample_page_archives() if p.name.endswith(".warc.gz"))
    target = pages / "broken-pages.warc.gz"
    with open(warc, "rb") as src, open(target, "wb") as dst:
        writer = WARCWriter(dst, gzip=True)
        for record in ArchiveIterator(src):
            uri = record.rec_headers.get_header("WARC-Target-URI")
            if record.rec_type != "response" or not uri:
                continue
            body = record.content_stream().read().replace(b"img.mmc4-sample.test/", b"img.mmc4-sample.test/missing/")
            headers = record.http_headers
            headers.remove_header("Content-Length")
            headers.remove_header("Content-Encoding")
            headers.remove_header("Transfer-Encoding")
            writer.write_record(
                writer.create_warc_record(
                    uri.replace("://", "://broken.", 1),
                    "response",
                    payload=io.BytesIO(body),
                    length=len(body),
                    http_headers=headers,
                )
            )
    return target


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        out = json.load(resp)
    if out.get("errors"):
        raise RuntimeError(out["errors"])
    return out["data"]


def wait_http(url: str, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(url)


LAUNCH = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
  ... on RunConfigValidationInvalid { errors { message } } ... on InvalidSubsetError { message } } }"""
RUN = """query($id: ID!) { runOrError(runId: $id) { ... on Run { status startTime endTime creationTime } } }"""
LOCATION = """{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
CHECKS = """query($k: AssetKeyInput!, $c: String!) { assetCheckExecutions(assetKey: $k, checkName: $c, limit: 5) {
  status partition runId evaluation { success } } }"""


def launch(port: int, partition: str, timeout: float) -> dict:
    params = {
        "selector": {
            "repositoryLocationName": "mmc4_assets",
            "repositoryName": "__repository__",
            "jobName": "mmc4_shard_job",
        },
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
    }
    started = time.time()
    out = graphql(port, LAUNCH, {"p": params})["launchRun"]
    if out["__typename"] != "LaunchRunSuccess":
        raise RuntimeError(out)
    run_id = out["run"]["runId"]
    while True:
        run = graphql(port, RUN, {"id": run_id})["runOrError"]
        if run["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        if time.time() - started > timeout:
            raise TimeoutError(f"run {run_id} still {run['status']}")
        time.sleep(1)
    return {
        "run_id": run_id,
        "status": run["status"],
        "launch_to_end_s": round(time.time() - started, 1),
        "queued_s": round(run["startTime"] - run["creationTime"], 1),
        "run_s": round(run["endTime"] - run["startTime"], 1),
    }


def cli_run(tmp: Path, env: dict) -> dict:
    home = tmp / "cli_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**env, "DAGSTER_HOME": str(home), "MMC4_STORAGE_ROOT": str(tmp / "cli_storage")}
    env.pop("MMC4_SHARDS_ROOT", None)
    env.pop("MMC4_PAGE_ARCHIVES", None)
    started = time.time()
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from mmc4_assets.cli import sample_main; sys.exit(sample_main(['--log-level', 'WARNING']))",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    line = next((x for x in out.stdout.splitlines() if "succeeded in" in x), out.stdout[-500:])
    return {"cli_printed": line.strip(), "cli_wall_s": round(time.time() - started, 1)}


def shoot(url: str, png: Path, *, wait_ms: int = 20000, size: str = "1500,950") -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium not found: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="mmc4-chromium-") as profile:
        subprocess.run(
            [
                chromium,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--host-resolver-rules={OFFLINE}",
                "--allow-file-access-from-files",
                f"--window-size={size}",
                f"--virtual-time-budget={wait_ms}",
                f"--screenshot={png}",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=180,
        )
    from PIL import Image

    Image.open(png).convert("RGB").quantize(colors=128).save(png, optimize=True)  # small PNGs


def stop_group(proc: subprocess.Popen | None) -> None:
    """End the process group we started: SIGTERM, then SIGKILL for what is left (dagster dev's
    webserver, daemon and code servers outlive a SIGTERM to their parent)."""
    if proc is None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        time.sleep(2)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "screenshots"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (printed)")
    parser.add_argument("--timeout", type=float, default=1200, help="per launched run")
    args = parser.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="mmc4-screens-"))
    home, storage, shards, pages = tmp / "home", tmp / "storage", tmp / "shards", tmp / "pages"
    for d in (home, storage, shards, pages):
        d.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")

    from mmc4_assets.sample.server import sample_page_archives, sample_shard_path

    shutil.copy(sample_shard_path(), shards / f"{SAMPLE}.json.gz")
    archives = [str(p) for p in sample_page_archives()] + [str(broken_copy(shards, pages))]
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "MMC4_STORAGE_ROOT": str(storage),
        "MMC4_PROFILE": "sample",
        "MMC4_SHARDS_ROOT": str(shards),
        "MMC4_PAGE_ARCHIVES": ",".join(archives),
        "PYTHONPATH": str(REPO),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": str(BIN.parent),
    }
    env.pop("MMC4_EXECUTOR", None)
    os.environ.update({"DAGSTER_HOME": str(home)})
    import dagster as dg

    dg.DagsterInstance.get().add_dynamic_partitions("shards", [SAMPLE, BROKEN])

    port, api_port = free_port(), free_port()
    report: dict = {"load_before": os.getloadavg()}
    dev = api = None
    try:
        if (BIN / "dg").exists():
            cmd = [str(BIN / "dg"), "dev", "--use-active-venv", "-p", str(port), "-h", "127.0.0.1"]
        else:
            cmd = [str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-p", str(port), "-h", "127.0.0.1"]
        report["ui_command"] = " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd))
        with open(tmp / "dev.log", "w") as log:  # the child keeps its own copy of the descriptor
            dev = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        started = time.time()
        wait_http(f"http://127.0.0.1:{port}/server_info", 300, dev)
        while True:  # the code location loads after the webserver answers
            entries = graphql(port, LOCATION)["workspaceOrError"]["locationEntries"]
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                break
            if time.time() - started > 300:
                raise TimeoutError(entries)
            time.sleep(2)
        errors = [e for e in entries if e["locationOrLoadError"]["__typename"] == "PythonError"]
        if errors:
            raise RuntimeError(errors)
        report["ui_ready_s"] = round(time.time() - started, 1)
        report["ui_launch_sample"] = launch(port, SAMPLE, args.timeout)
        report["ui_launch_broken"] = launch(port, BROKEN, args.timeout)
        report.update(cli_run(tmp, env))
        report["load_after_runs"] = os.getloadavg()
        asset, check = FAILING_CHECK
        report["check_executions"] = graphql(port, CHECKS, {"k": {"path": [asset]}, "c": check})["assetCheckExecutions"]

        tokens = tmp / "tokens.json"
        tokens.write_text("{}")
        api = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mmc4_assets.api",
                "--storage-root",
                str(storage),
                "--tokens-file",
                str(tokens),
                "--port",
                str(api_port),
                "--cache-dir",
                str(tmp / "api_cache"),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_http(f"http://127.0.0.1:{api_port}/openapi.json", 120, api)

        instance = dg.DagsterInstance.get()
        record = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey(asset), check), limit=1
        )[0]
        evaluation = record.event.dagster_event.event_specific_data  # an AssetCheckEvaluation
        docs_page = evaluation.metadata["data_docs"].value
        report["data_docs_page"] = docs_page

        ui = f"http://127.0.0.1:{port}"
        quoted = urllib.parse.quote(BROKEN)
        shots = {
            "lineage.png": f"{ui}/locations/mmc4_assets/asset-groups/mmc4/lineage",
            # the stage after the failed check: its partition for the broken shard is Failed
            "partitions.png": f"{ui}/assets/clip_scores?view=partitions&partition={quoted}",
            "failed_check.png": f"{ui}/assets/{asset}?view=checks&checkDetail={check}",
            "data_docs.png": docs_page,
            "api_docs.png": f"http://127.0.0.1:{api_port}/docs",
        }
        for name, url in shots.items():
            shoot(url, out_dir / name)
        report["screenshots"] = {name: f"{(out_dir / name).stat().st_size // 1024} KiB" for name in shots}
    finally:
        stop_group(api)
        stop_group(dev)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            report["tmp"] = str(tmp)
        print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
