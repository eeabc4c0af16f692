"""The FastAPI layer: routes, parameter validation, auth and error mapping; no domain logic."""

# no `from __future__ import annotations`: FastAPI resolves the closures' Annotated types at runtime
import contextlib
import logging
import math
import threading
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field

from mmc4_assets import __version__
from mmc4_assets.api.auth import FailureLimiter, RateLimiter, TokenVerifier, VerifierBusy, parse_authorization
from mmc4_assets.api.index import Catalog
from mmc4_assets.api.service import MAX_LIMIT, Dataset, InvalidQuery, NotReady
from mmc4_assets.api.service import Query as DatasetQuery
from mmc4_assets.api.shardcache import ShardCache, ShardUnavailable, default_cache_dir
from mmc4_assets.storage import ShardStore

log = logging.getLogger(__name__)

LIST_PARAMS = frozenset({"limit", "offset", "subset", "shard", "min_images", "min_matched_sim"})
# query parameters that carry credentials elsewhere (RFC 6750's access_token and friends):
# refused, and their values never reach the access log
TOKEN_PARAMS = frozenset(
    {"access_token", "token", "api_key", "apikey", "key", "auth", "authorization", "bearer", "password", "secret"}
)


@dataclass
class Settings:
    storage_root: str
    tokens_file: str
    storage_options: dict[str, Any] | None = None
    cache_dir: str | None = None  # sidecars; default ~/.cache/mmc4-assets/api
    index_ttl: float = 10.0  # seconds between manifest listings
    rate_limit: float | None = None  # requests per second per token; None: no limit
    burst: int | None = None
    warm: bool = False  # build every shard's sidecar in the background
    max_sync_builds: int = 64  # sidecars a filtered request may build itself before answering 503
    max_auth_failures: int = 10  # failed token attempts a client may make at once ...
    auth_failure_rate: float = 0.2  # ... then one per 1/rate seconds; over it: 429 before any PBKDF2
    verify_workers: int = 1  # threads deriving PBKDF2 for tokens not seen before
    max_pending_verifications: int = 16  # queued derivations beyond this answer 503 at once


# -- response models (the OpenAPI schema; pages are serialized without them) -------------
class Image(BaseModel):
    image_name: str | None = Field(description="content-addressed file name of the fetched image")
    raw_url: str | None = Field(description="where the image was found")
    matched_text_index: int | None = Field(description="index into text_list of the assigned sentence")
    matched_sim: float | None = Field(description="CLIP similarity of the image and that sentence")


class Document(BaseModel):
    id: str = Field(description="stable id: '{shard}-{line}'", examples=["42-17"])
    url: str | None
    text: str = Field(description="text_list joined with spaces")
    text_list: list[str]
    images: list[Image]


class DocumentPage(BaseModel):
    documents: list[Document]
    total: int = Field(description="documents matching the filters")
    offset: int
    limit: int
    next: int | None = Field(description="offset of the next page; null at the end")
    index_version: str = Field(
        description="changes when the published set changes; offsets are stable while it does not"
    )


class ShardInfo(BaseModel):
    shard: str
    subset: str
    num_docs: int
    num_images: int
    source_shard: str | None
    model: str | None
    sha256: str


class ShardList(BaseModel):
    shards: list[ShardInfo]
    index_version: str


class Health(BaseModel):
    status: str
    shards: int
    documents: int = Field(description="documents in the full subset")
    subsets: dict[str, dict[str, int]]
    index_version: str
    index_age_s: float
    skipped_manifests: int
    listing_error: bool


class Error(BaseModel):
    detail: Any


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Error, "description": "a token was sent in the query string; use the Authorization header"},
    401: {"model": Error, "description": "missing, malformed or unknown Bearer token"},
    429: {
        "model": Error,
        "description": "per-token rate limit, or this client's failed-token limit, exceeded; see Retry-After",
    },
    503: {
        "model": Error,
        "description": "a shard is being republished, or filter summaries are still being built; see Retry-After",
    },
}

DESCRIPTION = """\
Documents of the published MMC4-style shards, in a stable order (shard, then line).

Authenticate with `Authorization: Bearer <token>` (a token in the query string is refused with
400). Too many failed tokens from one client answer 429 with `Retry-After`. Page with `limit` (1-100) and `offset`;
`next` is the offset of the following page and `null` at the end. Offsets stay valid while
`index_version` does not change (a newly published shard changes it).
"""


def _json(body: bytes, status_code: int = 200) -> Response:
    return Response(content=body, media_type="application/json", status_code=status_code)


def _unauthorized(message: str, error: str = "") -> HTTPException:
    challenge = 'Bearer realm="mmc4"' + (f', error="{error}"' if error else "")
    return HTTPException(status_code=401, detail=message, headers={"WWW-Authenticate": challenge})


def _redact_query(path: str) -> str:
    """``/x?access_token=abc&limit=2`` -> ``/x?access_token=REDACTED&limit=2``."""
    base, sep, query = path.partition("?")
    if not sep:
        return path
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(k.lower() in TOKEN_PARAMS for k, _ in pairs):
        return path
    return base + "?" + urlencode([(k, "REDACTED" if k.lower() in TOKEN_PARAMS else v) for k, v in pairs])


class RedactTokens(logging.Filter):
    """Strips credential-looking query values from uvicorn's access log lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], _redact_query(args[2]), *args[3:])
        return True


def install_access_log_redaction() -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactTokens) for f in access.filters):
        access.addFilter(RedactTokens())


def create_app(settings: Settings) -> FastAPI:
    store = ShardStore(settings.storage_root, settings.storage_options)
    catalog = Catalog(store, ttl=settings.index_ttl)
    cache = ShardCache(store, settings.cache_dir or default_cache_dir())
    dataset = Dataset(catalog, cache, max_sync_builds=settings.max_sync_builds)
    # fails here, at startup, on a bad tokens file; later bad versions are logged and skipped
    verifier = TokenVerifier(
        settings.tokens_file, workers=settings.verify_workers, max_pending=settings.max_pending_verifications
    )
    limiter = RateLimiter(settings.rate_limit, settings.burst) if settings.rate_limit else None
    failures = FailureLimiter(settings.max_auth_failures, settings.auth_failure_rate)
    install_access_log_redaction()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        snap = catalog.refresh()
        log.info(
            "serving %s: %d shards, %s; %d token(s)",
            store.uri("published"),
            len(snap.entries),
            snap.counts(),
            len(verifier.names),
        )
        stop = threading.Event()
        warmer = None
        if settings.warm:

            def warm_loop() -> None:
                while not stop.is_set():
                    dataset.warm(stop)
                    stop.wait(max(settings.index_ttl, 1.0))

            warmer = threading.Thread(target=warm_loop, name="mmc4-api-warm", daemon=True)
            warmer.start()
        yield
        stop.set()
        verifier.close()
        if warmer is not None:
            warmer.join(timeout=5)

    # /docs and /redoc with Swagger UI / ReDoc files from the fastapi-offline package: no CDN
    app = FastAPIOffline(title="MMC4 read API", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.dataset, app.state.verifier, app.state.limiter = dataset, verifier, limiter
    app.state.failures = failures

    @app.middleware("http")
    async def refuse_query_tokens(request: Request, call_next):
        # a URL ends up in logs, proxies and browser history: credentials go in the header only
        sent = sorted({k for k in request.query_params if k.lower() in TOKEN_PARAMS})
        if sent:
            return JSONResponse(
                status_code=400,
                content={
                    "detail": (
                        f"credentials are not accepted in the query string ({', '.join(sent)}); send "
                        "'Authorization: Bearer <token>' instead, and treat a token sent this way as leaked"
                    )
                },
            )
        return await call_next(request)

    bearer = HTTPBearer(auto_error=False, description="an API token from the operator")

    async def authenticated(
        request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
    ) -> str:
        # parsed here rather than by HTTPBearer so every failure is a 401 with a challenge
        token, error = parse_authorization(request.headers.get("authorization"))
        if token is None:
            raise _unauthorized("missing or malformed Authorization header; expected 'Bearer <token>'", error)
        known, name = verifier.cached(token)  # on the loop: no thread hop for a token seen before
        if name is None:
            client = request.client.host if request.client else "unknown"
            wait = failures.retry_after(client)
            if wait > 0:  # refused before any PBKDF2 work
                raise HTTPException(
                    status_code=429,
                    detail="too many failed token attempts",
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                )
            # counted as a failure now (also while in flight), given back if the token verifies
            failures.failed(client)
            if not known:
                try:
                    # PBKDF2 once per token, on the verifier's executor: the request pool stays free
                    name = await verifier.verify_async(token)
                except VerifierBusy:
                    failures.refund(client)
                    raise HTTPException(
                        status_code=503, detail="token verification busy; retry shortly", headers={"Retry-After": "1"}
                    ) from None
            if name is None:
                raise _unauthorized("invalid token", "invalid_token")
            failures.refund(client)
        if limiter is not None:
            wait = limiter.acquire(name)
            if wait > 0:
                raise HTTPException(
                    status_code=429, detail="rate limit exceeded", headers={"Retry-After": str(max(1, math.ceil(wait)))}
                )
        return name

    Token = Annotated[str, Depends(authenticated)]

    @app.exception_handler(InvalidQuery)
    async def invalid_query(request: Request, exc: InvalidQuery) -> JSONResponse:
        return JSONResponse(
            status_code=422,
            content={"detail": [{"type": "value_error", "loc": ["query", exc.param], "msg": exc.message}]},
        )

    @app.exception_handler(ShardUnavailable)
    async def shard_unavailable(request: Request, exc: ShardUnavailable) -> JSONResponse:
        log.warning("503: %s", exc)  # the reason may name storage paths: logged, not returned
        return JSONResponse(
            status_code=503,
            headers={"Retry-After": "5"},
            content={"detail": f"shard {exc.key} is temporarily unavailable; retry shortly"},
        )

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, exc: NotReady) -> JSONResponse:
        return JSONResponse(
            status_code=503, headers={"Retry-After": str(exc.retry_after)}, content={"detail": str(exc)}
        )

    @app.get("/health", response_model=Health, tags=["service"])
    def health() -> dict[str, Any]:
        """Shard and document counts of the published set (no token needed)."""
        return dataset.health()

    @app.get("/datasets/mmc4", response_model=DocumentPage, responses=_ERRORS, tags=["mmc4"])
    def list_documents(
        request: Request,
        _token: Token,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="documents per page")] = 10,
        offset: Annotated[int, Query(ge=0, description="documents to skip")] = 0,
        subset: Annotated[str, Query(max_length=64, description="full, ff, core or core-ff")] = "full",
        shard: Annotated[
            str | None, Query(max_length=128, description="only this shard (see /datasets/mmc4/shards)")
        ] = None,
        min_images: Annotated[int | None, Query(ge=0, description="documents with at least this many images")] = None,
        min_matched_sim: Annotated[
            float | None,
            Query(
                ge=-1,
                le=1,
                allow_inf_nan=False,
                description="documents whose best image-sentence match has at least this similarity",
            ),
        ] = None,
    ) -> Response:
        """A page of documents in stable order (shard, then line)."""
        unknown = sorted(set(request.query_params) - LIST_PARAMS)
        if unknown:
            raise InvalidQuery(
                unknown[0], f"unknown query parameter {unknown[0]!r}; expected some of {sorted(LIST_PARAMS)}"
            )
        page = dataset.page(DatasetQuery(subset, shard, min_images, min_matched_sim), offset, limit)
        return _json(page.to_json())

    @app.get("/datasets/mmc4/shards", response_model=ShardList, responses=_ERRORS, tags=["mmc4"])
    def list_shards(_token: Token, subset: Annotated[str | None, Query(max_length=64)] = None) -> dict[str, Any]:
        """The published shards in serving order, with their manifests' counts."""
        snap, shards = dataset.shards(subset)
        return {"shards": shards, "index_version": snap.version}

    @app.get(
        "/datasets/mmc4/{doc_id}",
        response_model=Document,
        responses={**_ERRORS, 404: {"model": Error, "description": "no document with that id"}},
        tags=["mmc4"],
    )
    def get_document(
        _token: Token, doc_id: Annotated[str, Path(description="'{shard}-{line}' as in a page")]
    ) -> Response:
        """One document by id."""
        body = dataset.document(doc_id)
        if body is None:
            raise HTTPException(
                status_code=404, detail="no document with that id; ids look like '{shard}-{line}', e.g. '42-17'"
            )
        return _json(body)

    return app
