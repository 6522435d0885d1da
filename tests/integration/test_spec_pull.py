"""The distribution spec's pull and content-discovery requests, sent to docker-registry 2.8 (on
Swift) and to drayage in front of it, compared answer for answer.

Where drayage answers on purpose differently from the registry (the registry strays from the OCI
distribution spec), the test sends the same request to the registry, shows the difference, and
asserts drayage's answer; docs/compatibility.md lists each such difference and why.
"""
import concurrent.futures
import json
import uuid

import pytest
import requests

from harness.registry import (DOCKER_LIST, DOCKER_MANIFEST, KiB, OCI_INDEX, OCI_MANIFEST,
                              Registry, s3_storage)
from harness.faultproxy import FaultProxy, Rule
from harness.net import wait_until
from harness.swift import swift  # noqa: F401 (session fixture)

REPO = "spec/app"
# Tags in an order that is neither lexical nor the registry's listing order.
TAGS = ["v2", "b", "B", "Z", "_x", "v10", "a", "v1"]


@pytest.fixture(scope="module")
def upstream(swift, tmp_path_factory):  # noqa: F811
    root = f"/spec-{uuid.uuid4().hex[:8]}"
    # A catalog page of 2: drayage has to follow the registry's Link pages to list it whole.
    # Blobs served by the registry itself (no 307 to Swift), so their headers can be compared.
    reg = Registry(tmp_path_factory.mktemp("spec-reg"), s3=s3_storage(swift, root),
                   extra={"catalog": {"maxentries": 2},
                          "storage": {"redirect": {"disable": True}}}).start()
    image = reg.push_image(REPO, "v1", [KiB], seed=51)
    for tag in TAGS:
        put_manifest(reg.url, REPO, tag, image.manifest, OCI_MANIFEST)
    # An OCI index naming the image, under its own tag: Accept negotiation of indexes.
    index = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": image.manifest_digest,
                       "size": len(image.manifest),
                       "platform": {"architecture": "amd64", "os": "linux"}}],
    }).encode()
    put_manifest(reg.url, REPO, "multi", index, OCI_INDEX)
    for n in range(5):
        put_manifest(reg.url, f"spec/other{n}", "v1", image.manifest, OCI_MANIFEST,
                     blobs_from=(REPO, image))
    reg.image = image
    reg.index = index
    yield reg
    reg.stop()


def put_manifest(base: str, repo: str, ref: str, body: bytes, media_type: str,
                 blobs_from: tuple | None = None) -> None:
    if blobs_from is not None:
        src, image = blobs_from
        for blob in [image.config] + image.layers:
            r = requests.post(f"{base}/v2/{repo}/blobs/uploads/",
                              params={"mount": blob.digest, "from": src}, timeout=30)
            assert r.status_code == 201, r.text
    r = requests.put(f"{base}/v2/{repo}/manifests/{ref}", data=body,
                     headers={"Content-Type": media_type}, timeout=30)
    assert r.status_code == 201, r.text


@pytest.fixture(scope="module")
def mirror(upstream, build_dir, tmp_path_factory):
    from harness.drayage import Drayage
    d = Drayage(build_dir / "src" / "drayage", tmp_path_factory.mktemp("spec-mirror"), {
        "upstream": {"url": upstream.url, "connect_timeout": "2s", "response_timeout": "10s"},
        "cache": {"max_size": "256MiB"},
    }).start()
    yield d
    d.stop()


def both(method: str, upstream, mirror, path: str, **kw):
    """The same request to the registry and to drayage: (registry's answer, drayage's)."""
    reg = requests.request(method, upstream.url + path, timeout=30, **kw)
    mir = requests.request(method, mirror.url + path, timeout=30, **kw)
    return reg, mir


def code(r) -> str | None:
    try:
        return r.json()["errors"][0]["code"]
    except ValueError:
        return None


# ------------------------------------------------------------------------------------------------
# Manifest references (issue 15, item 1).

@pytest.mark.parametrize("ref", [".bad", "-bad", "t" * 129, "bad!"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_reference_that_is_no_tag_is_an_unknown_manifest(upstream, mirror, method, ref):
    """The registry's router answers 404 for a reference that is neither a tag nor a digest;
    drayage answers 404 as well, with the spec's MANIFEST_UNKNOWN body (the registry's is a
    plain-text "404 page not found"), and without asking the upstream."""
    before = len(upstream.requests())
    reg, mir = both(method, upstream, mirror, f"/v2/{REPO}/manifests/{ref}")
    assert reg.status_code == 404
    assert mir.status_code == 404, mir.text
    if method == "GET":
        assert code(mir) == "MANIFEST_UNKNOWN"
    upstream.sync()
    assert len([r for r in upstream.requests()[before:] if ref in r["path"]]) == 1  # ours only


def test_a_blob_reference_that_is_no_digest_is_an_unknown_blob(upstream, mirror):
    reg, mir = both("GET", upstream, mirror, f"/v2/{REPO}/blobs/v1")
    assert reg.status_code == 404 and mir.status_code == 404
    assert code(mir) == "BLOB_UNKNOWN"


@pytest.mark.parametrize("ref", ["md5:" + "a" * 32, "sha256:xyz", "sha256:" + "A" * 64,
                                 "foo:bar"])
def test_a_malformed_or_unsupported_manifest_digest_is_a_client_error(upstream, mirror, ref):
    """docker-registry 2.8 takes these for tags and fails on the storage path (500 UNKNOWN);
    the reference is the client's mistake: drayage answers 400 DIGEST_INVALID, as the registry
    itself does for the same reference on the blob endpoint."""
    reg, mir = both("GET", upstream, mirror, f"/v2/{REPO}/manifests/{ref}")
    assert reg.status_code == 500 and code(reg) == "UNKNOWN", reg.text
    assert mir.status_code == 400 and code(mir) == "DIGEST_INVALID"
    reg, mir = both("GET", upstream, mirror, f"/v2/{REPO}/blobs/{ref}")
    assert reg.status_code == mir.status_code == 400
    assert code(reg) == code(mir) == "DIGEST_INVALID"


@pytest.mark.parametrize("alg,length", [("sha384", 96), ("sha512", 128)])
def test_a_digest_of_another_supported_algorithm_is_unknown_not_invalid(upstream, mirror, alg,
                                                                        length):
    ref = f"{alg}:" + "a" * length
    for method in ("GET", "HEAD"):
        reg, mir = both(method, upstream, mirror, f"/v2/{REPO}/manifests/{ref}")
        assert reg.status_code == mir.status_code == 404
    assert code(mir_get(mirror, f"/v2/{REPO}/manifests/{ref}")) == "MANIFEST_UNKNOWN"


def mir_get(mirror, path: str, **kw):
    return requests.get(mirror.url + path, timeout=30, **kw)


# ------------------------------------------------------------------------------------------------
# Error codes for what does not exist.

def test_unknown_repository_manifest_and_blob_have_the_registry_error_codes(upstream, mirror):
    zero = "sha256:" + "0" * 64
    cases = [
        "/v2/spec/nosuch/manifests/v1",                       # unknown repository, by tag
        f"/v2/spec/nosuch/manifests/{upstream.image.manifest_digest}",
        f"/v2/{REPO}/manifests/nosuchtag",                    # known repository
        f"/v2/{REPO}/manifests/{zero}",
        f"/v2/spec/nosuch/blobs/{upstream.image.layers[0].digest}",
        f"/v2/{REPO}/blobs/{zero}",
        "/v2/spec/nosuch/tags/list",
    ]
    for path in cases:
        reg, mir = both("GET", upstream, mirror, path)
        assert (mir.status_code, code(mir)) == (reg.status_code, code(reg)), path
        assert mir.status_code == 404, path
    assert [code(mir_get(mirror, p)) for p in cases] == [
        "MANIFEST_UNKNOWN", "MANIFEST_UNKNOWN", "MANIFEST_UNKNOWN", "MANIFEST_UNKNOWN",
        "BLOB_UNKNOWN", "BLOB_UNKNOWN", "NAME_UNKNOWN"]


# ------------------------------------------------------------------------------------------------
# HEAD headers and Accept negotiation.

SAME_HEADERS = ("Docker-Content-Digest", "Content-Length", "Content-Type")


@pytest.mark.parametrize("accept", [
    None,
    ",".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST]),
    OCI_INDEX,
    DOCKER_LIST,
    ",".join([DOCKER_MANIFEST, DOCKER_LIST]),
    OCI_MANIFEST,
])
@pytest.mark.parametrize("ref", ["v1", "multi"])
def test_manifest_answers_match_the_registry_for_each_accept(upstream, mirror, accept, ref):
    """GET and HEAD, cold and then from drayage's cache, answer with the registry's status and
    its Docker-Content-Digest, Content-Length and Content-Type, whatever the client accepts:
    an OCI index asked for with only the Docker manifest list type is not served from cache."""
    headers = {"Accept": accept} if accept else {}
    digest = upstream.image.manifest_digest if ref == "v1" else None
    refs = [ref] + ([digest] if digest else [])
    for r in refs:
        for _ in range(2):  # the second time from the cache
            for method in ("HEAD", "GET"):
                reg, mir = both(method, upstream, mirror, f"/v2/{REPO}/manifests/{r}",
                                headers=headers)
                assert mir.status_code == reg.status_code, (method, r, accept, mir.text)
                if reg.status_code != 200:
                    assert code(mir) == code(reg) or method == "HEAD"
                    continue
                for h in SAME_HEADERS:
                    assert mir.headers.get(h) == reg.headers.get(h), (method, r, accept, h)
                if method == "GET":
                    assert mir.content == reg.content


# ------------------------------------------------------------------------------------------------
# Tag list and catalog pagination (issue 15, item 4).

ALL_TAGS = sorted(TAGS + ["multi"])  # byte order: what the spec calls lexical
ALL_REPOS = sorted([REPO] + [f"spec/other{n}" for n in range(5)])


def follow(mirror, path: str, key: str, n: int) -> list:
    """Every page from `path?n=<n>`, following drayage's Link headers; checks each page."""
    names, url, pages = [], f"{mirror.url}{path}?n={n}", 0
    while url:
        r = requests.get(url, timeout=30)
        assert r.status_code == 200, r.text
        page = r.json()[key]
        assert len(page) <= n and page == sorted(page)
        names += page
        link = r.headers.get("Link")
        url = None
        if link:
            assert len(page) == n
            assert link == f'<{path}?last={requests.utils.quote(page[-1], safe="")}&n={n}>; ' \
                           'rel="next"'
            url = mirror.url + link[1:link.index(">")]
        pages += 1
        assert pages <= 20
    return names


def test_tags_are_listed_whole_in_lexical_order(upstream, mirror):
    reg, mir = both("GET", upstream, mirror, f"/v2/{REPO}/tags/list")
    # docker-registry 2.8 lists tags in its storage driver's order: the bucket's (lexical) on
    # S3, directory order on a filesystem. drayage sorts them whatever the upstream does.
    assert sorted(reg.json()["tags"]) == ALL_TAGS
    assert mir.json() == {"name": REPO, "tags": ALL_TAGS}
    assert "Link" not in mir.headers


@pytest.mark.parametrize("n", [1, 2, 3, 4, 9, 10])
def test_tags_page_by_n_and_last_with_a_link_while_more_remain(upstream, mirror, n):
    reg, mir = both("GET", upstream, mirror, f"/v2/{REPO}/tags/list?n={n}")
    if n < len(ALL_TAGS):
        assert len(reg.json()["tags"]) == len(ALL_TAGS)  # docker-registry 2.8 ignores n
        assert "Link" not in reg.headers
    assert follow(mirror, f"/v2/{REPO}/tags/list", "tags", n) == ALL_TAGS


@pytest.mark.parametrize("query,want", [
    ("n=0", []),                                   # the spec: an empty list, no Link
    ("last=v10", ["v2"]),                          # after last, every one (no n)
    ("n=2&last=_x", ["a", "b"]),
    ("last=c", ["multi", "v1", "v10", "v2"]),      # last need not be a tag
    ("last=zzz", []),                              # past the end
    ("n=2&last=zzz", []),
    ("n=99999999999999999999999", ALL_TAGS),       # more than there are: all of them
])
def test_tags_pagination_corners(upstream, mirror, query, want):
    reg, mir = both("GET", upstream, mirror, f"/v2/{REPO}/tags/list?{query}")
    assert reg.status_code == 200 and sorted(reg.json()["tags"]) == ALL_TAGS  # 2.8: all, always
    assert mir.status_code == 200 and mir.json()["tags"] == want, query
    assert "Link" not in mir.headers or query == "n=2&last=_x"


@pytest.mark.parametrize("n", ["-1", "abc", "1.5"])
@pytest.mark.parametrize("path", [f"/v2/{REPO}/tags/list", "/v2/_catalog"])
def test_an_n_that_is_no_count_is_a_pagination_error(upstream, mirror, path, n):
    """docker-registry 2.8 ignores such an n (the whole list, or its default page);
    Distribution 3 answers 400 PAGINATION_NUMBER_INVALID, and so does drayage."""
    reg, mir = both("GET", upstream, mirror, f"{path}?n={n}")
    assert reg.status_code == 200
    assert mir.status_code == 400 and code(mir) == "PAGINATION_NUMBER_INVALID"


def test_the_catalog_is_read_whole_across_the_upstream_pages_and_paged_by_drayage(upstream,
                                                                                  mirror):
    reg, mir = both("GET", upstream, mirror, "/v2/_catalog")
    assert len(reg.json()["repositories"]) == 2 and "Link" in reg.headers  # maxentries 2
    assert mir.json() == {"repositories": ALL_REPOS}
    assert "Link" not in mir.headers
    for n in (1, 2, 4):
        assert follow(mirror, "/v2/_catalog", "repositories", n) == ALL_REPOS
    # Where the registry can answer the same page, its Link is drayage's, byte for byte.
    for query in ("n=1", "n=2", f"n=2&last={REPO}"):
        reg, mir = both("GET", upstream, mirror, f"/v2/_catalog?{query}")
        assert reg.status_code == 200
        assert mir.json() == reg.json() and mir.headers.get("Link") == reg.headers.get("Link")
    # Over the registry's page size, within drayage's (1000): drayage pages its whole list.
    reg, mir = both("GET", upstream, mirror, "/v2/_catalog?n=3")
    assert reg.status_code == 400 and code(reg) == "PAGINATION_NUMBER_INVALID"
    assert mir.status_code == 200 and mir.json()["repositories"] == ALL_REPOS[:3]
    reg, mir = both("GET", upstream, mirror, "/v2/_catalog?n=0")
    assert reg.json() == mir.json() == {"repositories": []}
    assert "Link" not in mir.headers


def test_a_listing_is_kept_for_the_manifest_ttl_and_served_stale_while_the_upstream_is_down(
        swift, tmp_path, drayage_factory):  # noqa: F811
    reg = Registry(tmp_path / "reg", s3=s3_storage(swift, f"/spec-ttl-{uuid.uuid4().hex[:8]}"))
    reg.start()
    try:
        image = reg.push_image("ttl/app", "v1", [KiB], seed=52)
        d = drayage_factory({"upstream": {"url": reg.url, "manifest_ttl": "1s",
                                          "max_stale": "1h", "connect_timeout": "1s",
                                          "response_timeout": "5s"}})
        tags = f"{d.url}/v2/ttl/app/tags/list"
        assert requests.get(tags, timeout=30).json()["tags"] == ["v1"]
        lists = len([r for r in reg.requests() if r["path"].startswith("/v2/ttl/app/tags")])
        put_manifest(reg.url, "ttl/app", "v2", image.manifest, OCI_MANIFEST)
        wait_until(lambda: requests.get(tags, timeout=30).json()["tags"] == ["v1", "v2"],
                   "drayage to list the new tag once its list is older than manifest_ttl")
        reg.sync()
        assert len([r for r in reg.requests()
                    if r["path"].startswith("/v2/ttl/app/tags")]) > lists
        reg.stop()
        wait_until(lambda: "Warning" in requests.get(tags, timeout=30).headers,
                   "the list to be served stale once manifest_ttl is over")
        r = requests.get(tags, params={"n": 1}, timeout=30)
        assert r.status_code == 200 and r.json()["tags"] == ["v1"]
        assert r.headers["Warning"].startswith("110 ")
        assert r.headers["Link"] == '</v2/ttl/app/tags/list?last=v1&n=1>; rel="next"'
    finally:
        reg.stop()


def test_blob_head_answers_match_the_registry(upstream, mirror):
    """HEAD of a blob, cold and then from the cache: the registry's status, Content-Length,
    Docker-Content-Digest and Content-Type."""
    for blob in [upstream.image.config] + upstream.image.layers:
        for _ in range(2):
            reg, mir = both("HEAD", upstream, mirror, f"/v2/{REPO}/blobs/{blob.digest}")
            assert reg.status_code == mir.status_code == 200
            for h in SAME_HEADERS:
                assert mir.headers.get(h) == reg.headers.get(h), (blob.digest, h)
            assert mir.headers["Content-Length"] == str(blob.size)
        r = requests.get(f"{mirror.url}/v2/{REPO}/blobs/{blob.digest}", timeout=30)
        assert r.status_code == 200 and len(r.content) == blob.size


def test_clients_waiting_for_one_listing_share_one_upstream_read(upstream, drayage_factory):
    """The first request's read of the tag list stalls upstream; seven more requests for the
    same list join it (counted as joined) instead of reading it again: the upstream sees one
    request, and all eight get the same answer when it fails."""
    proxy = FaultProxy("127.0.0.1", upstream.port).start()
    try:
        proxy.set_rules([Rule("stall_response", match="/tags/list", times=1)])
        d = drayage_factory({"upstream": {"url": proxy.endpoint, "timeout": "20s"}})
        url = f"{d.url}/v2/{REPO}/tags/list"
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            first = pool.submit(requests.get, url, timeout=120)
            wait_until(lambda: any("/tags/list" in line for line in proxy.request_lines),
                       "the first listing read to reach the upstream")
            rest = [pool.submit(requests.get, url, params={"n": 2}, timeout=120)
                    for _ in range(7)]
            joined = lambda: d.metric("drayage_registry_responses_total",  # noqa: E731
                                      'kind="listing",outcome="joined"')
            reads = lambda: len([line for line in proxy.request_lines  # noqa: E731
                                 if "/tags/list" in line])
            wait_until(lambda: joined() == 7 or reads() > 1,
                       "seven requests to join the read in flight, or to read again")
            answers = [first.result()] + [f.result() for f in rest]
        assert reads() == 1
        assert {a.status_code for a in answers} == {503}
        r = requests.get(url, params={"n": 2}, timeout=30)
        assert r.status_code == 200 and r.json()["tags"] == ALL_TAGS[:2]
    finally:
        proxy.stop()
