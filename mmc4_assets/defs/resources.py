"""Resources and the one place that chooses between the sample and a real deployment."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import PrivateAttr
from upath import UPath

from mmc4_assets.defs.quality import DataQuality
from mmc4_assets.fetch.http import FetchSettings
from mmc4_assets.storage import ShardStore

SHARD_SUFFIX = ".json.gz"


class StorageResource(dg.ConfigurableResource):
    """Storage root for every asset's output: a local directory or s3://bucket/prefix."""

    root: str

    def store(self) -> ShardStore:
        return ShardStore(self.root)


class ShardSource(dg.ConfigurableResource):
    """Where C4-format shards and the page archives (WARC/WAT) of their URLs live."""

    shards_root: str
    page_archives: list[str] = []  # paths or globs of .warc.gz / .wat.gz files

    def _root(self) -> UPath:
        return UPath(self.shards_root)

    def list_shards(self) -> list[str]:
        """Partition keys: file names under shards_root without the .json.gz suffix."""
        root = self._root()
        if not root.exists():
            return []
        return sorted(p.name[: -len(SHARD_SUFFIX)] for p in root.iterdir()
                      if p.name.endswith(SHARD_SUFFIX))

    def shard_path(self, key: str) -> UPath:
        if "/" in key or "\\" in key or key in ("", ".", ".."):
            raise ValueError(f"invalid shard key {key!r}")
        return self._root() / f"{key}{SHARD_SUFFIX}"

    def archive_paths(self) -> list[str]:
        paths: list[str] = []
        for pattern in self.page_archives:
            if "://" in pattern:
                fs_path = UPath(pattern)
                paths += [str(p) for p in fs_path.fs.glob(pattern)] if any(c in pattern for c in "*?[") \
                    else [pattern]
            else:
                paths += sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        return paths

    @staticmethod
    def open(path: str):
        return UPath(path).open("rb")


class ImageFetcher(dg.ConfigurableResource):
    """HTTP settings for image downloads. Private and loopback targets are refused unless allowed."""

    concurrency: int = 64
    per_host: int = 8
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    total_timeout: float = 30.0
    max_bytes: int = 16 * 1024 * 1024
    max_redirects: int = 5
    retries: int = 2
    user_agent: str = "mmc4-assets/0.1 (+https://github.com/mmc4-assets/mmc4-assets)"
    allow_private: bool = False
    respect_opt_out: bool = True
    url_rewrites: dict[str, str] = {}
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
        if self._server is not None:
            rewrites.update(self._server.rewrites)
        return FetchSettings(
            concurrency=self.concurrency, per_host=self.per_host,
            connect_timeout=self.connect_timeout, read_timeout=self.read_timeout,
            total_timeout=self.total_timeout, max_bytes=self.max_bytes,
            max_redirects=self.max_redirects, retries=self.retries, user_agent=self.user_agent,
            allow_private=self.allow_private, respect_opt_out=self.respect_opt_out,
            url_rewrites=rewrites)


class ClipModel(dg.ConfigurableResource):
    """An open_clip model, loaded once per process on first use."""

    model_name: str = "ViT-L-14"
    pretrained: str | None = "openai"  # an open_clip tag, a local checkpoint path, or None = random init
    device: str = "auto"
    precision: str = "fp32"
    batch_size: int = 64
    seed: int = 0
    _encoder: Any = PrivateAttr(default=None)

    def encoder(self):
        if self._encoder is None:
            from mmc4_assets.clip.encoder import ClipEncoder, ClipSpec

            self._encoder = ClipEncoder(ClipSpec(
                model_name=self.model_name, pretrained=self.pretrained, device=self.device,
                precision=self.precision, batch_size=self.batch_size, seed=self.seed))
        return self._encoder


def sample_resources(storage_root: str) -> dict[str, Any]:
    """The bundled sample: its shard and archives, its loopback image server, a tiny random CLIP."""
    from mmc4_assets.sample.server import sample_page_archives, sample_shard_path

    return {
        "storage": StorageResource(root=storage_root),
        "source": ShardSource(shards_root=str(sample_shard_path().parent),
                              page_archives=[str(p) for p in sample_page_archives()]),
        # the sample's images are served on 127.0.0.1, so private targets are allowed here only
        "fetcher": ImageFetcher(allow_private=True, serve_sample_images=True, concurrency=16,
                                total_timeout=10.0, retries=1),
        "clip": ClipModel(model_name="mmc4-tiny-random", pretrained=None, batch_size=32),
        "quality": DataQuality(),
    }


def production_resources() -> dict[str, Any]:
    """Everything from the environment; see README "Point it at real data"."""
    return {
        "storage": StorageResource(root=dg.EnvVar("MMC4_STORAGE_ROOT")),
        "source": ShardSource(shards_root=dg.EnvVar("MMC4_SHARDS_ROOT"),
                              page_archives=[p for p in os.environ.get("MMC4_PAGE_ARCHIVES", "").split(",") if p]),
        "fetcher": ImageFetcher(user_agent=os.environ.get("MMC4_USER_AGENT", ImageFetcher.model_fields["user_agent"].default)),
        "quality": DataQuality(),
        "clip": ClipModel(model_name=os.environ.get("MMC4_CLIP_MODEL", "ViT-L-14"),
                          pretrained=os.environ.get("MMC4_CLIP_PRETRAINED", "openai") or None,
                          device=os.environ.get("MMC4_CLIP_DEVICE", "auto")),
    }


def default_storage_root() -> str:
    return os.environ.get("MMC4_STORAGE_ROOT") or str(Path.cwd() / "storage")


@dg.definitions
def resources() -> dg.Definitions:
    # MMC4_PROFILE=sample (default) runs the bundled sample; =production reads MMC4_* variables.
    profile = os.environ.get("MMC4_PROFILE", "sample")
    if profile == "production":
        return dg.Definitions(resources=production_resources())
    if profile != "sample":
        raise ValueError(f"MMC4_PROFILE must be 'sample' or 'production', not {profile!r}")
    return dg.Definitions(resources=sample_resources(default_storage_root()))
