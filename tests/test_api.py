"""The read API, through a real HTTP client against uvicorn on 127.0.0.1 (started and stopped here)."""

import contextlib
import io
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
import zipfile

import httpx
import pytest
import uvicorn

from mmc4_assets.api import auth, cli
from mmc4_assets.api.app import Settings, create_app
from mmc4_assets.api.index import entry_from_manifest, locate, parse_doc_id
from mmc4_assets.publish.mmc4_format import make_document, shard_filename
from mmc4_assets.publish.shards import write_shard
from mmc4_assets.storage import ShardStore

ALICE, BOB = "alice-secret-token", "bob-secret-token"
ITERATIONS = 1_000  # cheap for tests; the CLI defaults to 600k


# -- a synthetic published set -------------------------------------------------------------
def synthetic_doc(shard: int, i: int) -> dict:
    n_images = 1 + (i + shard) % 4
    texts = [f"Shard {shard} doc {i} sentence {k}." for k in range(3 + i % 3)]
    sims = [round(0.10 + 0.05 * ((i * 7 + shard + j) % 6), 4) for j in range(n_images)]
    images = [
        {
            "image_name": f"{shard:02d}{i:04d}{j}.jpg",
            "raw_url": f"https://img.test/{shard}/{i}/{j}.jpg",
            "matched_text_index": j % len(texts),
            "matched_sim": sims[j],
        }
        for j in range(n_images)
    ]
    matrix = [[0.05] * len(texts) for _ in images]
    for j, im in enumerate(images):
        matrix[j][im["matched_text_index"]] = im["matched_sim"]
    return make_document(f"https://site.test/{shard}/{i}", texts, images, matrix, 0)


def publish(
    store: ShardStore, number: int, n_docs: int, subset: str | None = None, version: str = "v2", salt: str = ""
) -> list[dict]:
    docs = [synthetic_doc(number, i) for i in range(n_docs)]
    for d in docs:
        d["url"] += salt
    extra = {"source_shard": f"c4-train.{number:05d}-of-01024", "model": "synthetic"}
    if subset:
        extra["subset"] = subset
    write_shard(store, shard_filename(f"c4-train.{number:05d}-of-01024", version), iter(docs), extra)
    return docs


SIZES = {10: 12, 2: 0, 0: 7}  # written out of order; served by shard number; shard 2 is empty


def build_root(path) -> ShardStore:
    store = ShardStore(path)
    expected = {}
    for number, n in SIZES.items():
        for i, doc in enumerate(publish(store, number, n)):
            expected[f"{number}-{i}"] = doc
    store.expected = dict(sorted(expected.items(), key=lambda kv: tuple(map(int, kv[0].split("-")))))
    return store


def write_tokens(path):
    path.write_text(json.dumps({"alice": auth.hash_token(ALICE, ITERATIONS), "bob": auth.hash_token(BOB, ITERATIONS)}))
    return path


@pytest.fixture
def root(tmp_path):
    return build_root(tmp_path / "root")


@pytest.fixture
def tokens_file(tmp_path):
    return write_tokens(tmp_path / "tokens.json")


@contextlib.contextmanager
def serve(app):
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", timeout=10, headers={"Authorization": f"Bearer {ALICE}"}
        ) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def make_client(root, tokens_file, tmp_path):
    stack = contextlib.ExitStack()

    def make(**settings):
        kw = {
            "storage_root": str(root.root),
            "tokens_file": str(tokens_file),
            "cache_dir": str(tmp_path / "cache"),
            "index_ttl": 0,
            **settings,
        }
        return stack.enter_context(serve(create_app(Settings(**kw))))

    with stack:
        yield make


@pytest.fixture
def own(make_client):
    """A server of the test's own, for tests that change the published set or the tokens."""
    return make_client()


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One server for the tests that only read: (client, store)."""
    tmp = tmp_path_factory.mktemp("api")
    store = build_root(tmp / "root")
    settings = Settings(
        storage_root=str(store.root),
        tokens_file=str(write_tokens(tmp / "tokens.json")),
        cache_dir=str(tmp / "cache"),
        index_ttl=0,
    )
    with serve(create_app(settings)) as client:
        yield client, store


@pytest.fixture
def client(shared):
    return shared[0]


@pytest.fixture
def expected(shared):
    return shared[1].expected


def anonymous(client, path):
    return httpx.get(str(client.base_url).rstrip("/") + path)


def all_pages(client, limit, **params):
    docs, offset, pages = [], 0, 0
    while offset is not None:
        r = client.get("/datasets/mmc4", params={"limit": limit, "offset": offset, **params})
        assert r.status_code == 200, r.text
        body = r.json()
        docs += body["documents"]
        offset = body["next"]
        pages += 1
        assert pages < 1000
    return docs, body["total"]


# -- paging and documents --------------------------------------------------------------------
def test_pages_cover_every_document_once_in_stable_order(client, expected):
    docs, total = all_pages(client, limit=4)
    ids = [d["id"] for d in docs]
    assert total == len(expected) == 19
    assert ids == list(expected)  # shard 0, then 10 (numeric, not "10" < "2"), each by line
    assert len(set(ids)) == len(ids)
    again, _ = all_pages(client, limit=7)
    assert [d["id"] for d in again] == ids  # another page size, same order
    r = client.get("/datasets/mmc4", params={"offset": 5, "limit": 3}).json()
    assert [d["id"] for d in r["documents"]] == ids[5:8] and r["next"] == 8
    assert r["offset"] == 5 and r["limit"] == 3 and r["index_version"]
    assert client.get("/datasets/mmc4").json()["limit"] == 10
    last = client.get("/datasets/mmc4", params={"offset": 17, "limit": 100}).json()
    assert [d["id"] for d in last["documents"]] == ids[17:] and last["next"] is None
    past = client.get("/datasets/mmc4", params={"offset": 10**15}).json()
    assert past["documents"] == [] and past["next"] is None and past["total"] == 19


def test_document_fields_match_the_published_line(client, expected):
    for doc_id, source in list(expected.items())[::5]:
        got = client.get(f"/datasets/mmc4/{doc_id}").json()
        assert got == {
            "id": doc_id,
            "url": source["url"],
            "text": " ".join(source["text_list"]),
            "text_list": source["text_list"],
            "images": [
                {k: im[k] for k in ("image_name", "raw_url", "matched_text_index", "matched_sim")}
                for im in source["image_info"]
            ],
        }
    page = client.get("/datasets/mmc4", params={"limit": 100}).json()["documents"]
    assert page[0] == client.get(f"/datasets/mmc4/{page[0]['id']}").json()


@pytest.mark.parametrize(
    "path",
    [
        "/datasets/mmc4/0-7",  # line past the shard's end
        "/datasets/mmc4/2-0",  # empty shard
        "/datasets/mmc4/3-0",  # no such shard
        "/datasets/mmc4/0-01",  # not the canonical id of 0-1
        "/datasets/mmc4/0--1",
        "/datasets/mmc4/nonsense",
        "/datasets/mmc4/..",
        "/datasets/mmc4/..%2F..%2Fetc%2Fpasswd",
        "/datasets/mmc4/0-1%2F..%2F..",
        "/datasets/mmc4/0-1/../../../etc/passwd",
    ],
)
def test_unknown_or_malformed_ids_are_404(client, path):
    r = client.get(path)
    assert r.status_code == 404, (path, r.status_code, r.text)
    assert "etc" not in r.text and "root" not in r.text


# -- filters ---------------------------------------------------------------------------------
def test_filters_select_the_right_documents_and_page_through_them(client, expected):
    def expect(pred):
        return [i for i, d in expected.items() if pred(d)]

    def ids(**params):
        docs, total = all_pages(client, limit=3, **params)
        assert total == len(docs)
        return [d["id"] for d in docs]

    assert ids(min_images=3) == expect(lambda d: len(d["image_info"]) >= 3) != []
    best = lambda d: max(im["matched_sim"] for im in d["image_info"])  # noqa: E731
    assert ids(min_matched_sim=0.3) == expect(lambda d: best(d) >= 0.3) != []
    assert ids(min_matched_sim=0.25) == expect(lambda d: best(d) >= 0.25)  # inclusive at a stored value
    assert ids(min_images=2, min_matched_sim=0.2) == expect(lambda d: len(d["image_info"]) >= 2 and best(d) >= 0.2)
    assert ids(shard="10") == [i for i in expected if i.startswith("10-")]
    assert ids(shard="10", min_images=4) == expect(
        lambda d: d["url"].startswith("https://site.test/10/") and len(d["image_info"]) >= 4
    )
    assert ids(shard="2") == []
    assert ids(min_images=99) == []
    assert ids(subset="full") == ids() == ids(subset="mmc4")
    assert ids(subset="core-ff") == []  # a known subset, not published yet: empty, not an error


def test_subsets_come_from_manifests_and_keep_ids_unique(own, root):
    core = publish(root, 0, 3, subset="core", version="v3")  # same shard number, another subset
    assert [d["id"] for d in all_pages(own, limit=2, subset="core")[0]] == ["core.0-0", "core.0-1", "core.0-2"]
    assert all_pages(own, limit=100)[1] == 19  # the full subset is unchanged
    got = own.get("/datasets/mmc4/core.0-1").json()
    assert got["url"] == core[1]["url"] and got["id"] == "core.0-1"
    assert own.get("/datasets/mmc4", params={"subset": "mmc4-core", "shard": "core.0"}).json()["total"] == 3
    r = own.get("/datasets/mmc4", params={"shard": "core.0"})  # default subset is full
    assert r.status_code == 422 and "subset 'core'" in r.text
    health = own.get("/health").json()
    assert health["subsets"]["core"] == {"shards": 1, "documents": 3, "images": sum(len(d["image_info"]) for d in core)}
    shards = own.get("/datasets/mmc4/shards").json()["shards"]
    assert [s["shard"] for s in shards] == ["0", "2", "10", "core.0"]
    assert [s["shard"] for s in own.get("/datasets/mmc4/shards", params={"subset": "core"}).json()["shards"]] == [
        "core.0"
    ]


# -- a changing published set ------------------------------------------------------------------
def test_new_and_republished_shards_show_up_without_restart(own, root):
    before = own.get("/datasets/mmc4", params={"limit": 1}).json()
    assert before["total"] == 19
    # a zip without its manifest is not published yet
    with root.open_atomic(root.path("published", "docs_shard_5_v2.jsonl.zip")) as fh:
        fh.write(b"not yet")
    assert own.get("/datasets/mmc4").json()["total"] == 19
    publish(root, 5, 4)
    after = own.get("/datasets/mmc4", params={"limit": 100}).json()
    assert after["total"] == 23 and after["index_version"] != before["index_version"]
    assert [d["id"] for d in after["documents"]][7:11] == ["5-0", "5-1", "5-2", "5-3"]
    assert own.get("/health").json()["shards"] == 4
    # republished with other content: the new zip's checksum selects a new sidecar
    new = publish(root, 0, 7, salt="?v=2")
    assert own.get("/datasets/mmc4/0-3").json()["url"] == new[3]["url"]


def test_zip_rewritten_before_its_manifest_is_503_not_wrong_data(own, root):
    """published_shards replaces the zip, then the manifest: between the two, never mix them up."""
    assert own.get("/datasets/mmc4/10-0").status_code == 200  # shard 10's sidecar is built, shard 0's is not
    manifests = {n: root.path("published", f"docs_shard_{n}_v2.manifest.json") for n in (0, 10)}
    old = {n: m.read_bytes() for n, m in manifests.items()}
    for n in (0, 10):
        publish(root, n, SIZES[n], salt="?v=2")
        root.write_bytes(manifests[n], old[n])  # the new zip under the old manifest
    assert own.get("/datasets/mmc4/10-0").json()["url"] == root.expected["10-0"]["url"]  # what the manifest says
    r = own.get("/datasets/mmc4/0-0")
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert "published" not in r.text  # no storage paths in the answer
    publish(root, 0, SIZES[0], salt="?v=3")  # the manifest lands
    assert own.get("/datasets/mmc4/0-0").json()["url"].endswith("?v=3")


def test_filters_on_a_cold_corpus_answer_503_while_summaries_build(make_client, root):
    client = make_client(max_sync_builds=1)  # 2 non-empty shards, none built yet
    r = client.get("/datasets/mmc4", params={"min_images": 2})
    assert r.status_code == 503 and int(r.headers["retry-after"]) > 0 and "of 3 shards are ready" in r.text
    deadline = time.monotonic() + 10
    while (r := client.get("/datasets/mmc4", params={"min_images": 2})).status_code == 503:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert r.json()["total"] == sum(len(d["image_info"]) >= 2 for d in root.expected.values())


# -- auth --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "header, error",
    [
        (None, None),
        ("", None),
        (f"Bearer {ALICE}x", "invalid_token"),
        ("Bearer wrong", "invalid_token"),
        (f"Basic {ALICE}", "invalid_request"),
        ("Bearer", "invalid_request"),
        (f"Bearer {ALICE} extra", "invalid_request"),
        (f"{ALICE}", "invalid_request"),
    ],
)
def test_auth_failures_are_401_with_a_bearer_challenge(client, header, error):
    headers = {"Authorization": header} if header is not None else {}
    for path in ("/datasets/mmc4", "/datasets/mmc4/0-0", "/datasets/mmc4/shards", "/datasets/mmc4?limit=999"):
        req = client.build_request("GET", path)
        del req.headers["Authorization"]
        req.headers.update(headers)
        r = client.send(req)
        assert r.status_code == 401, (path, r.text)
        challenge = r.headers["www-authenticate"]
        assert challenge.startswith("Bearer")
        assert (f'error="{error}"' in challenge) if error else "error=" not in challenge
        assert ALICE not in r.text


def test_good_tokens_health_without_token_and_revocation(own, tokens_file):
    assert own.get("/datasets/mmc4", headers={"Authorization": f"bearer {BOB}"}).status_code == 200
    health = anonymous(own, "/health")
    assert health.status_code == 200
    assert health.json() | {"index_age_s": 0} == {
        "status": "ok",
        "shards": 3,
        "documents": 19,
        "index_age_s": 0,
        "skipped_manifests": 0,
        "listing_error": False,
        "index_version": health.json()["index_version"],
        "subsets": {"full": {"shards": 3, "documents": 19, "images": health.json()["subsets"]["full"]["images"]}},
    }
    tokens_file.write_text(json.dumps({"alice": auth.hash_token(ALICE, ITERATIONS)}))  # bob revoked
    os.utime(tokens_file, ns=(time.time_ns() + 10**9,) * 2)
    assert own.get("/datasets/mmc4", headers={"Authorization": f"Bearer {BOB}"}).status_code == 401
    assert own.get("/datasets/mmc4").status_code == 200


def test_token_hashes_are_verified_once_in_constant_time(tokens_file, tmp_path):
    line = auth.hash_token("t0ken", 1_000)
    assert line.startswith("pbkdf2_sha256$1000$") and "t0ken" not in line
    assert auth.hash_token("t0ken", 1_000) != line  # salted
    verifier = auth.TokenVerifier(tokens_file)
    assert verifier.verify(ALICE) == "alice" and verifier.derivations == 2  # every entry is tried
    for _ in range(5):
        assert verifier.verify(ALICE) == "alice" and verifier.verify("nope") is None
    assert verifier.derivations == 4  # once per distinct token, then cached
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"carol": "hunter2"}))
    with pytest.raises(auth.TokenFileError, match="hashes only"):
        auth.TokenVerifier(plain)
    toml = tmp_path / "tokens.toml"
    toml.write_text(f'[tokens]\n"dave" = "{line}"\n')
    assert auth.TokenVerifier(toml).verify("t0ken") == "dave"


def test_hash_token_cli_makes_a_working_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("my-token\n"))
    path = tmp_path / "tokens.json"
    assert (
        cli.main(["hash-token", "--name", "erin", "--token-stdin", "--iterations", "1000", "--tokens-file", str(path)])
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith('"erin": "pbkdf2_sha256$1000$') and "my-token" not in path.read_text()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert auth.TokenVerifier(path).verify("my-token") == "erin"
    assert cli.main(["hash-token", "--name", "fay", "--iterations", "1000", "--tokens-file", str(path)]) == 0
    token = capsys.readouterr().err.rsplit(": ", 1)[-1].strip()
    assert auth.TokenVerifier(path).verify(token) == "fay" and token.startswith("mmc4_")


def test_rate_limit_is_per_token_and_answers_429(make_client):
    client = make_client(rate_limit=0.5, burst=2)
    codes = [client.get("/datasets/mmc4").status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    r = client.get("/datasets/mmc4")
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert client.get("/datasets/mmc4", headers={"Authorization": f"Bearer {BOB}"}).status_code == 200
    assert client.get("/health").status_code == 200


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params, param",
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": -1}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"offset": -1}, "offset"),
        ({"offset": "1e3"}, "offset"),
        ({"min_images": -1}, "min_images"),
        ({"min_images": "x"}, "min_images"),
        ({"min_matched_sim": 1.5}, "min_matched_sim"),
        ({"min_matched_sim": "nan"}, "min_matched_sim"),
        ({"min_matched_sim": "inf"}, "min_matched_sim"),
        ({"subset": "nope"}, "subset"),
        ({"subset": "../core"}, "subset"),
        ({"shard": "../../etc"}, "shard"),
        ({"shard": "/etc/passwd"}, "shard"),
        ({"shard": "0/../10"}, "shard"),
        ({"shard": "x" * 500}, "shard"),
        ({"limt": 5}, "limt"),
    ],
)
def test_bad_parameters_are_422_naming_the_parameter(client, params, param):
    r = client.get("/datasets/mmc4", params=params)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert any(d["loc"][-1] == param and d["msg"] for d in detail), detail
    assert "root:" not in r.text


def test_openapi_schema_and_docs(client):
    schema = anonymous(client, "/openapi.json").json()
    op = schema["paths"]["/datasets/mmc4"]["get"]
    assert {p["name"] for p in op["parameters"]} == {
        "limit",
        "offset",
        "subset",
        "shard",
        "min_images",
        "min_matched_sim",
    }
    assert op["security"] and "HTTPBearer" in schema["components"]["securitySchemes"]
    page = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert set(schema["components"]["schemas"][page]["properties"]) >= {"documents", "total", "next"}
    assert {"401", "422", "429"} <= set(op["responses"])
    assert "/datasets/mmc4/{doc_id}" in schema["paths"] and "/health" in schema["paths"]
    docs = anonymous(client, "/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


# -- domain pieces -----------------------------------------------------------------------------
def test_ids_keys_and_offsets():
    assert parse_doc_id("42-17") == ("42", 17)
    assert parse_doc_id("core-ff.12-0") == ("core-ff.12", 0)
    assert parse_doc_id("my-crawl-3") == ("my-crawl", 3)
    for bad in ("42-017", "42", "-1", "../1-2", "a/b-1", "42-1 ", ""):
        assert parse_doc_id(bad) is None
    cum = (3, 3, 10)
    assert [locate(cum, o) for o in (0, 2, 3, 9, 10)] == [(0, 0), (0, 2), (2, 0), (2, 6), None]
    manifest = {"shard_file": "docs_shard_7_v2.jsonl.zip", "num_docs": 1, "sha256": "a" * 64}
    assert entry_from_manifest("docs_shard_7_v2.manifest.json", manifest).key == "7"
    assert entry_from_manifest("x.manifest.json", {**manifest, "subset": "mmc4-core-ff"}).key == "core-ff.7"
    with pytest.raises(ValueError, match="unsafe"):
        entry_from_manifest("x.manifest.json", {**manifest, "shard_file": "../../etc/passwd"})


def test_broken_manifests_are_skipped_and_reported(own, root):
    root.write_bytes(root.path("published", "docs_shard_9_v2.manifest.json"), b"{not json")
    root.write_bytes(
        root.path("published", "docs_shard_8_v2.manifest.json"),
        json.dumps({"shard_file": "../x.jsonl.zip", "num_docs": 1, "sha256": "a" * 64}).encode(),
    )
    health = own.get("/health").json()
    assert health["shards"] == 3 and health["skipped_manifests"] == 2
    assert own.get("/datasets/mmc4").json()["total"] == 19


def test_serves_an_s3_storage_root(tokens_file, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask a metadata service
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        options = {"endpoint_url": endpoint, "key": "test", "secret": "test"}
        store = ShardStore("s3://mmc4/corpus", options)
        store.root.fs.mkdir("mmc4")
        docs = publish(store, 3, 5)
        settings = Settings(
            storage_root="s3://mmc4/corpus",
            storage_options=options,
            tokens_file=str(tokens_file),
            cache_dir=str(tmp_path / "cache"),
            index_ttl=0,
        )
        with serve(create_app(settings)) as client:
            page = client.get("/datasets/mmc4", params={"offset": 2}).json()
            assert page["total"] == 5 and [d["url"] for d in page["documents"]] == [d["url"] for d in docs[2:]]
            publish(store, 4, 2)
            assert client.get("/datasets/mmc4/4-1").json()["url"] == synthetic_doc(4, 1)["url"]
        assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".download")]
    finally:
        server.stop()


def test_sidecar_reads_only_what_a_page_needs(root, tmp_path):
    from mmc4_assets.api.index import Catalog
    from mmc4_assets.api.service import Dataset
    from mmc4_assets.api.shardcache import ShardCache

    entry = Catalog(root).snapshot().by_key["10"]
    cache = ShardCache(root, tmp_path / "c", block_docs=4)
    data = cache.get(entry)
    assert data.num_docs == 12 and len(data.offsets) == 4  # three blocks of 4
    got = [json.loads(b) for b in data.read([5, 6, 11])]
    assert [d["url"] for d in got] == [root.expected[f"10-{i}"]["url"] for i in (5, 6, 11)]
    assert data.n_images.tolist() == [len(root.expected[f"10-{i}"]["image_info"]) for i in range(12)]
    assert math.isclose(
        float(data.max_sim[0]), max(im["matched_sim"] for im in root.expected["10-0"]["image_info"]), rel_tol=1e-6
    )
    assert cache.get(entry) is data and cache.builds == 1
    dataset = Dataset(Catalog(root), cache)
    assert dataset.warm(threading.Event()) == 1 and cache.builds == 2  # shard 0; empty shard 2 needs none
    with zipfile.ZipFile(root.path("published", entry.shard_file).path) as zf:
        assert len(zf.namelist()) == 1


def test_documented_command_serves(tmp_path):
    """`python -m mmc4_assets.api --storage-root ... --tokens-file ...`, as the README says."""
    store = ShardStore(tmp_path / "root")
    publish(store, 1, 3)
    tokens = write_tokens(tmp_path / "tokens.json")
    cmd = [
        sys.executable,
        "-m",
        "mmc4_assets.api",
        "--storage-root",
        str(store.root),
        "--tokens-file",
        str(tokens),
        "--port",
        "0",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        for line in proc.stderr:  # uvicorn logs the port it bound
            m = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        assert port, "server did not start"
        base = f"http://127.0.0.1:{port}"
        r = httpx.get(f"{base}/datasets/mmc4", headers={"Authorization": f"Bearer {ALICE}"})
        assert r.status_code == 200 and r.json()["total"] == 3
    finally:
        proc.terminate()
        proc.wait(10)


def test_serve_refuses_a_tokens_file_with_plaintext(tmp_path, capsys):
    bad = tmp_path / "plain.json"
    bad.write_text(json.dumps({"x": "plaintext"}))
    assert cli.main(["--storage-root", str(tmp_path), "--tokens-file", str(bad)]) == 2
    assert "hashes only" in capsys.readouterr().err
