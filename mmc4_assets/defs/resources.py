"""Resources and the one place that chooses between the sample and a real deployment."""

from __future__ import annotations

import glob
import os
from typing import Any

import dagster as dg
from dagster_aws.s3 import S3Resource
from dagster_aws.s3.resources import ResourceWithS3Configuration
from pydantic import PrivateAttr
from upath import UPath

from mmc4_assets.defs.classifiers import FeatureClassifiers
from mmc4_assets.defs.quality import DataQuality
from mmc4_assets.fetch.http import FetchSettings
from mmc4_assets.storage import ShardStore, open_store, resolve_root
from mmc4_assets.storage.s3 import options_for, s3fs_storage_options
from mmc4_assets.storage.settings import S3_ENV_FIELDS

SHARD_SUFFIX = ".json.gz"
# dagster-aws's S3 settings (ResourceWithS3Configuration, S3Resource): the same names here
S3_FIELDS = (
    "endpoint_url",
    "region_name",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "profile_name",
    "use_unsigned_session",
    "use_ssl",
    "verify",
    "max_attempts",
)


def s3_fields(s3: ResourceWithS3Configuration | None) -> dict[str, Any]:
    """The S3 settings of a dagster-aws ``S3Resource``, to configure a storage resource alike."""
    if s3 is None:
        return {}
    return {
        name: getattr(s3, name)
        for name in S3_FIELDS
        if getattr(s3, name) != ResourceWithS3Configuration.model_fields[name].default
    }


def s3_storage_options(s3: ResourceWithS3Configuration) -> dict[str, Any]:
    """s3fs options from dagster-aws S3 settings; unset ones fall to the default AWS chain."""
    return s3fs_storage_options(**{name: getattr(s3, name) for name in S3_FIELDS})


class StorageResource(ResourceWithS3Configuration):
    """Storage root for every asset's output: a local directory or s3://bucket/prefix.

    The S3 fields are dagster-aws's (``S3Resource``'s): endpoint, region, credentials,
    retries. Left unset, s3fs uses AWS_* variables, the ECS task role or IRSA on EKS.
    """

    root: str
    # temporary files of killed writes older than this are swept (local roots); keep it above
    # the instance's run_monitoring.max_runtime_seconds so no live run owns one
    temp_max_age_hours: float = 24.0

    def store(self) -> ShardStore:
        return open_store(
            self.root, s3={name: getattr(self, name) for name in S3_FIELDS}, temp_max_age=self.temp_max_age_hours * 3600
        )


class CommonCrawlConfig(dg.Config):
    """Common Crawl as a page source: CDX index lookup by URL, then a byte-range read of the record."""

    index_url: str = "https://index.commoncrawl.org"
    # C4 (c4-en) was cut from the 2019-18 crawl; several collections are tried in order
    collections: list[str] = ["CC-MAIN-2019-18"]
    # where the index's `filename`s live: the public bucket, or https://data.commoncrawl.org/
    archive_root: str = "s3://commoncrawl/"
    # the crawl bucket is AWS's (us-east-1), also when the storage root is another S3 service
    endpoint_url: str | None = None
    region_name: str | None = "us-east-1"
    concurrency: int = 16  # index lookups and range reads in flight per shard
    # Common Crawl's columnar URL index (parquet: url, fetch_time, fetch_status,
    # content_mime_detected, warc_filename, warc_record_offset, warc_record_length), paths or
    # globs, e.g. s3://commoncrawl/cc-index/table/cc-main/warc/crawl=CC-MAIN-2019-18/subset=warc/*.parquet:
    # joined with all shards' URLs in one Dask job (shard_pages) instead of one CDX call per URL
    columnar_index: list[str] = []
    # per-URL CDX lookups in raw_c4 for URLs still without a page; None: only when no
    # columnar index is configured (at C4 scale the CDX server cannot take 365M requests)
    cdx_fallback: bool | None = None
    timeout: float = 30.0
    retries: int = 4  # the public index answers 503 under load: back off and retry
    user_agent: str = "mmc4-assets/0.1 (+https://github.com/mmc4-assets/mmc4-assets)"

    def settings(self):
        from mmc4_assets.pages.cc_index import CommonCrawlSettings

        options = s3fs_storage_options(endpoint_url=self.endpoint_url, region_name=self.region_name)
        return CommonCrawlSettings(
            index_url=self.index_url,
            collections=tuple(self.collections),
            archive_root=self.archive_root,
            storage_options=options_for(self.archive_root, options),
            concurrency=self.concurrency,
            timeout=self.timeout,
            retries=self.retries,
            user_agent=self.user_agent,
        )

    def uses_cdx(self) -> bool:
        return self.cdx_fallback if self.cdx_fallback is not None else not self.columnar_index


class ShardSource(ResourceWithS3Configuration):
    """Where C4-format shards and the page archives (WARC/WAT) of their URLs live.

    ``shards_root`` and ``page_archives`` may be local or s3:// (S3 fields as in
    ``StorageResource``); pages not found in the archives are looked up in Common Crawl
    when ``common_crawl`` is set.
    """

    shards_root: str
    page_archives: list[str] = []  # paths or globs of .warc.gz / .wat.gz files
    common_crawl: CommonCrawlConfig | None = None
    # raw_c4 without a shard_pages table scans the archives itself only when there are at
    # most this many (the sample, tests); beyond, it fails and asks for the join
    max_scanned_archives: int = 16

    def _options(self, url: str) -> dict[str, Any]:
        return options_for(url, s3_storage_options(self))

    def _root(self) -> UPath:
        return UPath(self.shards_root, **self._options(self.shards_root))

    def list_shards(self) -> list[str]:
        """Partition keys: file names under shards_root without the .json.gz suffix."""
        root = self._root()
        try:
            root.fs.invalidate_cache(root.path)  # a sensor lists again every tick
            names = [name.rstrip("/").rsplit("/", 1)[-1] for name in root.fs.ls(root.path, detail=False)]
        except FileNotFoundError:
            return []
        return sorted(n[: -len(SHARD_SUFFIX)] for n in names if n.endswith(SHARD_SUFFIX))

    def shard_path(self, key: str) -> UPath:
        if "/" in key or "\\" in key or key in ("", ".", ".."):
            raise ValueError(f"invalid shard key {key!r}")
        return self._root() / f"{key}{SHARD_SUFFIX}"

    def archive_paths(self) -> list[str]:
        # fsspec globs without the protocol: _expand puts it back so open() reaches the same store
        return [path for pattern in self.page_archives for path in self._expand(pattern)]

    def options_for(self, path: str) -> dict[str, Any]:
        """fsspec options for a path under this source (what Dask workers need to open it)."""
        return self._options(path)

    def archive_keys(self) -> dict[str, str]:
        """Archive partition key -> path, for every file the ``page_archives`` patterns find.

        The key is the path relative to its pattern's directory part (``pages/archive_keys.py``).
        """
        from mmc4_assets.pages.archive_keys import key_for

        found: dict[str, str] = {}
        for pattern in self.page_archives:
            for path in self._expand(pattern):
                key = key_for(path, pattern)
                if found.get(key, path) != path:
                    raise ValueError(
                        f"archive key {key!r} names two files: {found[key]} and {path}; "
                        "give their directories separate page_archives patterns"
                    )
                found[key] = path
        return dict(sorted(found.items()))

    def archive_path(self, key: str) -> str:
        """The file of an archive partition key (one existence check per pattern, no listing)."""
        from mmc4_assets.pages.archive_keys import archive_relpath, matches, pattern_root

        rel = archive_relpath(key)
        for pattern in self.page_archives:
            root = pattern_root(pattern)
            path = f"{root}/{rel}" if root else rel
            if matches(path, pattern) and UPath(path, **self._options(path)).exists():
                return path
        raise FileNotFoundError(
            f"archive partition {key!r}: no file {rel!r} under the page_archives patterns {self.page_archives}"
        )

    def _expand(self, pattern: str) -> list[str]:
        if "://" in pattern:
            fs = UPath(pattern, **self._options(pattern)).fs
            if any(c in pattern for c in "*?["):
                fs.invalidate_cache()  # a sensor lists again every tick
                return sorted(fs.unstrip_protocol(p) for p in fs.glob(pattern))
            return [pattern]
        return sorted(glob.glob(pattern, recursive=True)) if any(c in pattern for c in "*?[") else [pattern]

    def open(self, path: str):
        """A streaming binary reader (s3fs reads ahead in blocks; nothing is downloaded whole)."""
        path = str(path)
        return UPath(path, **self._options(path)).open("rb")


class DaskEngine(dg.ConfigurableResource):
    """Where the page join runs: an in-process Dask LocalCluster, or a running scheduler.

    Set ``scheduler_address`` (``MMC4_DASK_SCHEDULER``) to run on a cluster (dask-kubernetes,
    ``dask scheduler`` on VMs, Coiled); workers then need this package installed and read
    and write the storage roots themselves (docs/scale.md).
    """

    scheduler_address: str | None = None
    n_workers: int = 2
    threads_per_worker: int = 1
    memory_limit: str = "2GiB"  # per worker: dask spills to disk, then pauses, above it
    processes: bool = True
    shuffle_method: str = "p2p"

    def settings(self):
        from mmc4_assets.engine import EngineSettings

        return EngineSettings(
            scheduler_address=self.scheduler_address,
            n_workers=self.n_workers,
            threads_per_worker=self.threads_per_worker,
            memory_limit=self.memory_limit,
            processes=self.processes,
            shuffle_method=self.shuffle_method,
        )


def dask_engine_from_env() -> DaskEngine:
    """``MMC4_DASK_SCHEDULER`` (tcp://host:8786), else a LocalCluster of ``MMC4_DASK_WORKERS``
    workers of ``MMC4_DASK_MEMORY_LIMIT`` each."""
    defaults = DaskEngine.model_fields
    return DaskEngine(
        scheduler_address=os.environ.get("MMC4_DASK_SCHEDULER") or None,
        n_workers=int(os.environ.get("MMC4_DASK_WORKERS", defaults["n_workers"].default)),
        memory_limit=os.environ.get("MMC4_DASK_MEMORY_LIMIT", defaults["memory_limit"].default),
    )


class ImageFetcher(dg.ConfigurableResource):
    """HTTP settings for image downloads (defaults and meaning: FetchSettings, fetch/client.py).

    Private and loopback targets are refused unless allowed.
    """

    concurrency: int = FetchSettings.concurrency
    per_host: int = FetchSettings.per_host
    connect_timeout: float = FetchSettings.connect_timeout
    read_timeout: float = FetchSettings.read_timeout
    total_timeout: float = FetchSettings.total_timeout
    max_bytes: int = FetchSettings.max_bytes
    max_redirects: int = FetchSettings.max_redirects
    retries: int = FetchSettings.retries
    user_agent: str = FetchSettings.user_agent
    allow_private: bool = FetchSettings.allow_private
    respect_opt_out: bool = FetchSettings.respect_opt_out
    url_rewrites: dict[str, str] = {}
    per_host_rps: float = FetchSettings.per_host_rps  # request starts per second to one host; 0 = unlimited
    unthrottled_hosts: list[str] = []  # hosts you operate (mirrors): no per-host rate limit
    dns_timeout: float = FetchSettings.dns_timeout
    max_retry_after: float = FetchSettings.max_retry_after
    backoff_base: float = FetchSettings.backoff_base
    # X-Robots-Tag directives scoped to these bots ("img2dataset: noai") apply to us too,
    # besides those scoped to our user-agent token and unscoped ones.
    opt_out_tokens: list[str] = list(FetchSettings.opt_out_tokens)
    # Start the bundled sample's image server on 127.0.0.1 for the run (sample profile only).
    serve_sample_images: bool = False
    _server: Any = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if self.serve_sample_images:
            from mmc4_assets.sample.server import SampleImageServer

            self._server = SampleImageServer()
            self._server.start()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def settings(self) -> FetchSettings:
        rewrites = dict(self.url_rewrites)
        unthrottled = {h.lower() for h in self.unthrottled_hosts}
        if self._server is not None:
            rewrites.update(self._server.rewrites)
            unthrottled.add(self._server.address[0])  # our own loopback server: no politeness wait
        return FetchSettings(
            concurrency=self.concurrency,
            per_host=self.per_host,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            total_timeout=self.total_timeout,
            max_bytes=self.max_bytes,
            max_redirects=self.max_redirects,
            retries=self.retries,
            user_agent=self.user_agent,
            allow_private=self.allow_private,
            respect_opt_out=self.respect_opt_out,
            url_rewrites=rewrites,
            per_host_rps=self.per_host_rps,
            unthrottled_hosts=frozenset(unthrottled),
            dns_timeout=self.dns_timeout,
            max_retry_after=self.max_retry_after,
            backoff_base=self.backoff_base,
            opt_out_tokens=tuple(self.opt_out_tokens),
        )


class ClipModel(dg.ConfigurableResource):
    """An open_clip model, loaded once per process on first use."""

    model_name: str = "ViT-L-14"
    pretrained: str | None = "openai"  # an open_clip tag, a local checkpoint path, or None = random init
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 where the device has it natively (GPUs, AMX CPUs), else fp32
    batch_size: int = 64
    seed: int = 0
    text_batch_size: int = 256  # sentences (of 32 tokens: a token budget) per forward pass, sorted by length
    compile: str = "auto"  # torch.compile both towers: on | off | auto (models >= 50M params; README: when it pays)
    fast_decode: bool = True  # JPEG decode at 1/2-1/8 DCT scale when still >= the model's input size
    decode_workers: int = 0  # image decode/preprocess threads; 0: all cores with a GPU, 2 on CPU
    sentence_cache_size: int = 32768  # sentence embeddings kept across a shard's batches (LRU)
    image_cache_size: int = 4096  # image embeddings kept across a shard's batches (LRU)
    _encoder: Any = PrivateAttr(default=None)

    def encoder(self):
        if self._encoder is None:
            from mmc4_assets.clip.encoder import ClipEncoder, ClipSpec

            self._encoder = ClipEncoder(
                ClipSpec(
                    model_name=self.model_name,
                    pretrained=self.pretrained,
                    device=self.device,
                    precision=self.precision,
                    batch_size=self.batch_size,
                    text_batch_size=self.text_batch_size,
                    seed=self.seed,
                    compile=self.compile,
                    fast_decode=self.fast_decode,
                )
            )
        return self._encoder

    def scorer(self, load_image):
        """A ShardScorer for one shard (caches and decode pool live as long as it does)."""
        from mmc4_assets.clip.scoring import ShardScorer

        return ShardScorer(
            self.encoder(),
            load_image,
            decode_workers=self.decode_workers,
            sentence_cache_size=self.sentence_cache_size,
            image_cache_size=self.image_cache_size,
        )


def sample_resources(
    storage_root: str,
    *,
    shards_root: str | None = None,
    page_archives: list[str] | None = None,
    s3: S3Resource | None = None,
    common_crawl: CommonCrawlConfig | None = None,
) -> dict[str, Any]:
    """The bundled sample: its shard and archives, its loopback image server, a tiny random CLIP.

    ``shards_root``/``page_archives`` point at copies elsewhere (e.g. uploaded to s3://);
    ``s3``'s settings reach every s3:// root; ``common_crawl`` adds the CC index as a page source.
    """
    from mmc4_assets.sample.server import sample_page_archives, sample_shard_path

    archives = [str(p) for p in sample_page_archives()] if page_archives is None else page_archives
    return {
        "storage": StorageResource(root=storage_root, **s3_fields(s3)),
        "source": ShardSource(
            shards_root=shards_root or str(sample_shard_path().parent),
            page_archives=archives,
            common_crawl=common_crawl,
            **s3_fields(s3),
        ),
        # the sample's images are served on 127.0.0.1, so private targets are allowed here only
        "fetcher": ImageFetcher(
            allow_private=True, serve_sample_images=True, concurrency=16, total_timeout=10.0, retries=1
        ),
        "clip": ClipModel(model_name="mmc4-tiny-random", pretrained=None, batch_size=32),
        # a few hundred URLs: one worker thread in this process, no worker processes to start
        "dask": DaskEngine(n_workers=1, threads_per_worker=2, processes=False),
        "quality": DataQuality(),
        # no weights: NSFW and face filters are OFF, and the metadata says so
        "classifiers": FeatureClassifiers(),
    }


def env_or(name: str, default: Any, *, as_int: bool = False, if_empty: Any = None) -> Any:
    """An optional setting from the environment: ``dg.EnvVar(name)`` when the variable is set at
    load (then its value is read when a run starts and never shown in the UI), ``if_empty`` when
    it is set to "", else ``default``.

    Only whether the variable exists is looked at here, never its value: an unset optional
    variable keeps the field's default instead of failing every run (a bare ``EnvVar`` requires
    the variable at run time), as ``s3_resource_from_env`` does for the S3 settings.
    """
    if name not in os.environ:
        return default
    if not os.environ[name]:
        return if_empty
    return dg.EnvVar.int(name) if as_int else dg.EnvVar(name)


def _env_list(name: str) -> list[str]:
    return [p.strip() for p in os.environ.get(name, "").split(",") if p.strip()]


def s3_resource_from_env(prefix: str = "MMC4_S3_") -> S3Resource | None:
    """An S3Resource from ``{prefix}ENDPOINT_URL``, ``REGION``, ``PROFILE``, ``ACCESS_KEY_ID``,
    ``SECRET_ACCESS_KEY``, ``SESSION_TOKEN``, ``MAX_ATTEMPTS``; None when none is set (then
    s3fs uses the default AWS chain: AWS_* variables, the ECS task role, IRSA on EKS).

    Values are bound as ``EnvVar``s: read when a run starts, never shown in the UI.
    """
    fields = {var: name for var, name in S3_ENV_FIELDS.items() if var != "MAX_ATTEMPTS"}
    kwargs: dict[str, Any] = {
        field: dg.EnvVar(prefix + var) for var, field in fields.items() if os.environ.get(prefix + var)
    }
    if os.environ.get(prefix + "MAX_ATTEMPTS"):
        kwargs["max_attempts"] = dg.EnvVar.int(prefix + "MAX_ATTEMPTS")
    return S3Resource(**kwargs) if kwargs else None


def common_crawl_from_env() -> CommonCrawlConfig | None:
    """Common Crawl as a page source when ``MMC4_CC_INDEX_URL`` (the CDX API, e.g.
    https://index.commoncrawl.org) or ``MMC4_CC_COLUMNAR_INDEX`` (parquet paths/globs) is set."""
    index_url = os.environ.get("MMC4_CC_INDEX_URL")
    if not index_url and not _env_list("MMC4_CC_COLUMNAR_INDEX"):
        return None
    defaults = CommonCrawlConfig.model_fields
    index_url = index_url or defaults["index_url"].default
    return CommonCrawlConfig(
        index_url=index_url,
        collections=_env_list("MMC4_CC_COLLECTIONS") or defaults["collections"].default,
        archive_root=os.environ.get("MMC4_CC_ARCHIVE_ROOT", defaults["archive_root"].default),
        concurrency=int(os.environ.get("MMC4_CC_CONCURRENCY", defaults["concurrency"].default)),
        columnar_index=_env_list("MMC4_CC_COLUMNAR_INDEX"),
        # the crawl bucket is AWS's (us-east-1) even when the storage root is another S3 service
        endpoint_url=os.environ.get("MMC4_CC_S3_ENDPOINT_URL") or None,
    )


def production_resources() -> dict[str, Any]:
    """Everything from the environment; see README "Point it at real data" and "Production deployment"."""
    s3 = s3_resource_from_env()
    fetcher, clip = ImageFetcher.model_fields, ClipModel.model_fields
    return {
        "storage": StorageResource(root=dg.EnvVar("MMC4_STORAGE_ROOT"), **s3_fields(s3)),
        "source": ShardSource(
            shards_root=dg.EnvVar("MMC4_SHARDS_ROOT"),
            page_archives=_env_list("MMC4_PAGE_ARCHIVES"),
            common_crawl=common_crawl_from_env(),
            **s3_fields(s3),
        ),
        "fetcher": ImageFetcher(
            user_agent=env_or("MMC4_USER_AGENT", fetcher["user_agent"].default, if_empty=fetcher["user_agent"].default)
        ),
        "quality": DataQuality(),
        "dask": dask_engine_from_env(),
        "classifiers": FeatureClassifiers(
            nsfw_weights=env_or("MMC4_NSFW_WEIGHTS", None),
            face_weights=env_or("MMC4_FACE_WEIGHTS", None),
            # the weights were trained on the model the features come from
            feature_model=env_or("MMC4_CLIP_MODEL", clip["model_name"].default),
        ),
        "clip": ClipModel(
            model_name=env_or("MMC4_CLIP_MODEL", clip["model_name"].default, if_empty=clip["model_name"].default),
            pretrained=env_or("MMC4_CLIP_PRETRAINED", clip["pretrained"].default),  # "": random
            device=env_or("MMC4_CLIP_DEVICE", clip["device"].default, if_empty=clip["device"].default),
        ),
    }


def default_storage_root() -> str:
    return resolve_root()


@dg.definitions
def resources() -> dg.Definitions:
    # MMC4_PROFILE=sample (default) runs the bundled sample; =production reads MMC4_* variables.
    # MMC4_EXECUTOR=k8s|ecs runs each step of a shard's run in its own pod/task (see deploy/).
    from mmc4_assets.deploy.executors import executor_from_env

    profile = os.environ.get("MMC4_PROFILE", "sample")
    if profile == "production":
        return dg.Definitions(resources=production_resources(), executor=executor_from_env("multiprocess"))
    if profile != "sample":
        raise ValueError(f"MMC4_PROFILE must be 'sample' or 'production', not {profile!r}")
    # A run launched from the UI runs in one process here: a subprocess per step (the default
    # multiprocess executor) costs 10-30 s of imports per step on a small machine, longer than
    # the sample's whole work (docs/performance.md, "Runs launched from the UI").
    # MMC4_SHARDS_ROOT / MMC4_PAGE_ARCHIVES add shards to the sample profile (its image server,
    # tiny CLIP and loopback fetching stay): more shards than the bundled one, same settings.
    return dg.Definitions(
        resources=sample_resources(
            default_storage_root(),
            shards_root=os.environ.get("MMC4_SHARDS_ROOT") or None,
            page_archives=_env_list("MMC4_PAGE_ARCHIVES") or None,
            s3=s3_resource_from_env(),
        ),
        executor=executor_from_env("in_process"),
    )
