"""A small great-expectations 1.x runner: one validation per asset partition.

dagster-ge does not support GX 1.x, so this is our own. great_expectations is imported
lazily (it takes several seconds) and only by processes that run checks.

With a project directory (a local storage root) the context is one persistent GX *file*
context, ``{storage root}/gx``: each suite is stored once under its asset's name, every
validation result is kept (run name = the partition key), and Data Docs
(``gx/uncommitted/data_docs/local_site``) accumulate them; a check links to its own
validation page. The pages' CDN styles and scripts are replaced by copies we ship
(``data_docs_static/vendor``, licences there), so they render styled offline. Without a
directory (object-store roots) the context is ephemeral and keeps nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_SITE = "local_site"  # the file context's default site
_SOURCE = "mmc4"
_VENDOR = Path(__file__).parent / "data_docs_static" / "vendor"
# CDN URL (as in GX 1.24's templates) -> file under static/vendor/; None drops the tag
_CDN = {
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": "bootstrap.min.css",
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": "bootstrap.min.js",
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": "popper.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": "bootstrap-table.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": "bootstrap-table.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js": "bootstrap-table-filter-control.min.js",  # noqa: E501
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css": "bootstrap-table-filter-control.min.css",  # noqa: E501
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css": "bootstrap-table-filter-control.min.css",  # noqa: E501
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": "fontawesome/css/all.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css": "bootstrap-datepicker.min.css",  # noqa: E501
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js": "bootstrap-datepicker.min.js",  # noqa: E501
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css": "bootstrap-prefers-dark.min.css",  # noqa: E501
}
_DROPPED = re.compile(r'<script src="https://cdn\.jsdelivr\.net/npm/vega[^"]*"></script>\s*')


def localize_page(page: Path, site_root: Path) -> None:
    """Point a Data Docs page's CDN links at the site's static/vendor copies (offline rendering)."""
    html = page.read_text(encoding="utf-8")
    prefix = Path(*([".."] * (len(page.relative_to(site_root).parts) - 1)), "static", "vendor").as_posix()
    out = _DROPPED.sub("", html)
    static = prefix.rsplit("/", 1)[0]
    # the navbar's logo is fetched from GX's bucket: the site's own copy instead
    out = re.sub(
        r'src="https://great-expectations-web-assets[^"]*/logo-long\.png[^"]*"',
        f'src="{static}/images/logo-long.png"',
        out,
    )
    # GX links the favicon one level short on validation pages
    out = re.sub(r'href="(?:\.\./)*static/images/favicon\.ico"', f'href="{static}/images/favicon.ico"', out)
    for url, local in _CDN.items():
        out = out.replace(url, f"{prefix}/{local}")
    # GX adds subresource-integrity hashes for some CDN files; local copies need none
    out = re.sub(r'\s+integrity="[^"]*"', "", out)
    if out != html:
        page.write_text(out, encoding="utf-8")


def _page_path(url: str) -> Path:
    from urllib.parse import unquote, urlparse

    return Path(unquote(urlparse(url).path))


@dataclass
class ExpectationOutcome:
    expectation: str
    column: str | None
    success: bool
    unexpected_count: int | None
    observed: Any
    kwargs: dict = field(default_factory=dict)

    def message(self) -> str:
        from mmc4_assets.quality.messages import expectation_message

        return expectation_message(self.expectation, self.column, self.kwargs, self.unexpected_count, self.observed)


@dataclass
class SuiteOutcome:
    suite: str
    success: bool
    results: list[ExpectationOutcome] = field(default_factory=list)
    docs_url: str | None = None

    @property
    def failed(self) -> list[ExpectationOutcome]:
        return [r for r in self.results if not r.success]

    def as_markdown(self) -> str:
        lines = ["| expectation | column | ok | unexpected | observed |", "|---|---|---|---:|---|"]
        for r in self.results:
            lines.append(
                f"| {r.expectation} | {r.column or ''} | {'✅' if r.success else '❌'} | "
                f"{'' if r.unexpected_count is None else r.unexpected_count} | "
                f"{'' if r.observed is None else str(r.observed)[:60]} |"
            )
        return "\n".join(lines)


class GXRunner:
    """One GX context per process; validations are serialised (GX is not thread-safe), and, for a
    file context, across processes too (a lock file beside it)."""

    def __init__(self, project_dir: str | Path | None = None, *, build_docs: bool = True):
        self.project_dir = Path(project_dir) if project_dir else None
        self.build_docs = build_docs and self.project_dir is not None
        self._context = None
        self._lock = threading.Lock()

    @property
    def site_dir(self) -> Path | None:
        return self.project_dir / "gx" / "uncommitted" / "data_docs" / _SITE if self.project_dir else None

    @contextlib.contextmanager
    def _process_lock(self):
        if self.project_dir is None:
            yield
            return
        self.project_dir.mkdir(parents=True, exist_ok=True)
        with open(self.project_dir / "gx.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _ctx(self):
        if self._context is None:
            import great_expectations as gx

            if self.project_dir is None:
                ctx = gx.get_context(mode="ephemeral")
            else:
                ctx = gx.get_context(mode="file", project_root_dir=str(self.project_dir))
            ctx.variables.progress_bars = {"globally": False}
            if _SOURCE not in ctx.data_sources.all():
                ctx.data_sources.add_pandas(_SOURCE)
            self._context = ctx
        return self._context

    def _validation(self, ctx, suite_name: str, expectations: list):
        """The asset's suite, validation definition and checkpoint, stored once and updated in place."""
        import great_expectations as gx

        source = ctx.data_sources.get(_SOURCE)
        try:
            asset = source.get_asset(suite_name)
        except LookupError:
            asset = source.add_dataframe_asset(suite_name)
        try:
            batch_def = asset.get_batch_definition("shard")
        except KeyError:
            batch_def = asset.add_batch_definition_whole_dataframe("shard")
        suite = gx.ExpectationSuite(name=suite_name)
        for expectation in expectations:
            suite.add_expectation(expectation)
        suite = ctx.suites.add_or_update(suite)
        definition = ctx.validation_definitions.add_or_update(
            gx.ValidationDefinition(data=batch_def, suite=suite, name=suite_name)
        )
        return ctx.checkpoints.add_or_update(
            gx.Checkpoint(name=suite_name, validation_definitions=[definition], actions=[])
        )

    def validate(
        self, suite_name: str, run_name: str, frame, expectations: list, run_id: str | None = None
    ) -> SuiteOutcome:
        """Validate a pandas frame against expectations built by ``mmc4_assets.quality.suites``.

        ``suite_name`` is the asset, ``run_name`` the partition key; ``run_id`` (Dagster's)
        goes into the result's metadata.
        """
        from great_expectations.core.run_identifier import RunIdentifier

        with self._lock, self._process_lock():
            ctx = self._ctx()
            checkpoint = self._validation(ctx, suite_name, expectations)
            result = checkpoint.run(batch_parameters={"dataframe": frame}, run_id=RunIdentifier(run_name=run_name))
            outcome = SuiteOutcome(suite=suite_name, success=bool(result.success))
            for identifier, run in result.run_results.items():
                # a whole-dataframe batch names no data asset: the page would say "Data asset: None"
                run.meta.setdefault("batch_spec", {})["data_asset_name"] = f"{suite_name} [{run_name}]"
                if run_id:
                    run.meta["dagster_run_id"] = run_id
                if self.project_dir is not None:
                    ctx.validation_results_store.set(identifier, run)
                for r in run.results:
                    cfg = r.expectation_config
                    res = r.result or {}
                    outcome.results.append(
                        ExpectationOutcome(
                            expectation=cfg.type,
                            column=cfg.kwargs.get("column"),
                            success=bool(r.success),
                            unexpected_count=res.get("unexpected_count"),
                            observed=res.get("observed_value"),
                            kwargs={k: v for k, v in dict(cfg.kwargs).items() if k != "batch_id"},
                        )
                    )
                if self.build_docs:
                    outcome.docs_url = self._build_docs(ctx, identifier)
            return outcome

    def _build_docs(self, ctx, identifier) -> str | None:
        """This validation's page and the index, localized; the page's path."""
        ctx.build_data_docs(site_names=[_SITE], resource_identifiers=[identifier])
        site = self.site_dir
        vendor = site / "static" / "vendor"
        if not (vendor / "README.md").exists():
            shutil.copytree(_VENDOR, vendor, dirs_exist_ok=True)
        urls = ctx.get_docs_sites_urls(resource_identifier=identifier, site_name=_SITE)
        page = _page_path(urls[0]["site_url"]) if urls else None
        suite_page = site / "expectations" / f"{identifier.expectation_suite_identifier.name}.html"
        for path in (site / "index.html", page, suite_page):
            if path is not None and path.exists():
                localize_page(path, site)
        return str(page) if page is not None else None
