"""Pull path end to end: real clients pull through drayage from a real upstream docker-registry.

skopeo (registries.conf mirror), containerd (ctr --hosts-dir, which adds ?ns=docker.io) and dockerd
(registry-mirrors) pull images with 1 KiB to 300 MiB layers; the digests they end up with match
what was pushed upstream, and a second pull is served without a single upstream blob GET (counted
in the upstream's access log).
"""
import concurrent.futures
import hashlib
import pathlib
import signal
import socket
import time

import pytest
import requests

from harness.clients import Containerd, Dockerd, dir_blobs, skopeo_pull
from harness.faultproxy import FaultProxy
from harness.registry import ALL_MANIFESTS, KiB, MiB, Registry

BIG = 300 * MiB


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("upstream")).start()
    # For skopeo (no unpacking): odd sizes around the 5 MiB part boundary.
    reg.skopeo_image = reg.push_image("e2e/skopeo", "v1", [KiB, 5 * MiB + 1, BIG], seed=1)
    # For containerd and dockerd, which unpack: sizes that make valid tar layers.
    reg.unpack_image = reg.push_image("e2e/unpack", "v1", [2 * KiB, BIG], seed=2)
    yield reg
    reg.stop()


def mirror_config(upstream_url: str, **upstream_extra) -> dict:
    up = {"url": upstream_url, "connect_timeout": "2s", "response_timeout": "5s"}
    up.update(upstream_extra)
    return {"upstream": up, "cache": {"max_size": "2GiB"}}


def upstream_blob_gets(reg: Registry) -> int:
    return len(reg.blob_gets())


def sha256_file(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def test_skopeo_pulls_through_mirror_and_second_pull_is_all_hits(upstream, drayage_factory,
                                                                  tmp_path):
    d = drayage_factory(mirror_config(upstream.url))
    image = upstream.skopeo_image
    before = upstream_blob_gets(upstream)

    dest = tmp_path / "pull1"
    r = skopeo_pull(tmp_path / "sk1", f"127.0.0.1:{d.port}", "e2e/skopeo:v1", dest)
    assert r.returncode == 0, r.stderr + "\n" + d.log()[-3000:]
    blobs = dir_blobs(dest)
    for layer in image.layers:
        assert layer.digest in blobs
        assert sha256_file(blobs[layer.digest]) == layer.digest
    assert image.config.digest in blobs
    assert (dest / "manifest.json").read_bytes() == image.manifest
    first = upstream_blob_gets(upstream) - before
    assert first == len(image.layers) + 1  # every layer and the config, once

    mark = upstream_blob_gets(upstream)
    dest2 = tmp_path / "pull2"
    r = skopeo_pull(tmp_path / "sk2", f"127.0.0.1:{d.port}", "e2e/skopeo:v1", dest2)
    assert r.returncode == 0, r.stderr
    assert dir_blobs(dest2).keys() == blobs.keys()
    upstream.sync()
    assert upstream_blob_gets(upstream) == mark, "second pull fetched blobs upstream"

    assert d.metric("drayage_registry_responses_total", 'kind="blob",outcome="hit"') >= len(blobs)


def test_containerd_pulls_through_mirror_with_ns_parameter(upstream, drayage_factory, tmp_path):
    d = drayage_factory(mirror_config(upstream.url))
    image = upstream.unpack_image
    mark = upstream_blob_gets(upstream)
    # Through a proxy that records what containerd sends: drayage's access log has no queries.
    recorder = FaultProxy("127.0.0.1", d.port).start()
    try:
        with Containerd(tmp_path / "ctrd1") as c:
            r = c.pull(recorder.endpoint, "docker.io/e2e/unpack:v1")
            assert r.returncode == 0, r.stdout + r.stderr + "\n" + d.log()[-3000:]
            assert c.image_digest("docker.io/e2e/unpack:v1") == image.manifest_digest
    finally:
        recorder.stop()
    pulls = [line for line in recorder.request_lines
             if "/manifests/" in line or "/blobs/" in line]
    assert len(pulls) >= len(image.layers) + 2, recorder.request_lines  # manifest, config, layers
    assert all("?ns=docker.io " in line for line in pulls), pulls
    first = upstream_blob_gets(upstream) - mark
    assert first == len(image.layers) + 1

    # A fresh containerd (empty content store) pulls again: everything comes from drayage's cache.
    mark = upstream_blob_gets(upstream)
    with Containerd(tmp_path / "ctrd2") as c:
        r = c.pull(d.url, "docker.io/e2e/unpack:v1")
        assert r.returncode == 0, r.stdout + r.stderr
        assert c.image_digest("docker.io/e2e/unpack:v1") == image.manifest_digest
    upstream.sync()
    assert upstream_blob_gets(upstream) == mark


def test_dockerd_pulls_through_registry_mirror(upstream, drayage_factory, tmp_path):
    d = drayage_factory(mirror_config(upstream.url))
    image = upstream.unpack_image
    with Containerd(tmp_path / "ctrd") as c, Dockerd(tmp_path / "dockerd", c, d.url) as dk:
        r = dk.pull("e2e/unpack:v1")
        assert r.returncode == 0, r.stdout + r.stderr + "\n" + dk.log() + "\n" + d.log()[-3000:]
        assert dk.repo_digest("e2e/unpack:v1") == image.manifest_digest
    # The daemon asked drayage, not Docker Hub (unreachable here), for every blob.
    served = {a["path"].rsplit("/", 1)[1] for a in d.access("/blobs/") if a["status"] == 200}
    assert served >= {image.config.digest} | {layer.digest for layer in image.layers}, served


def test_concurrent_cold_gets_make_one_upstream_transfer(upstream, drayage_factory, tmp_path):
    blob_size = 200 * MiB
    image = upstream.push_image("e2e/herd", "v1", [blob_size], seed=3)
    layer = image.layers[0]
    d = drayage_factory(mirror_config(upstream.url))
    # Manifest first, as a client would (teaches drayage the repository).
    requests.get(f"{d.url}/v2/e2e/herd/manifests/v1", headers={"Accept": ALL_MANIFESTS})
    mark = len(upstream.blob_gets(layer.digest))

    def fetch(_):
        h = hashlib.sha256()
        n = 0
        with requests.get(f"{d.url}/v2/e2e/herd/blobs/{layer.digest}", stream=True,
                          timeout=120) as r:
            assert r.status_code == 200
            assert r.headers["Docker-Content-Digest"] == layer.digest
            assert int(r.headers["Content-Length"]) == blob_size
            for chunk in r.iter_content(1 << 20):
                h.update(chunk)
                n += len(chunk)
        return n, "sha256:" + h.hexdigest()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(fetch, range(16)))
    assert all(r == (blob_size, layer.digest) for r in results)
    upstream.sync()
    assert len(upstream.blob_gets(layer.digest)) - mark == 1


def test_range_on_cold_blob_then_cached(upstream, drayage_factory):
    image = upstream.push_image("e2e/range", "v1", [3 * MiB + 17], seed=4)
    layer = image.layers[0]
    data = layer.path.read_bytes()
    d = drayage_factory(mirror_config(upstream.url))
    url = f"{d.url}/v2/e2e/range/blobs/{layer.digest}"
    r = requests.get(url, headers={"Range": "bytes=2000000-2000099"})
    assert r.status_code == 206
    assert r.headers["Content-Range"] == f"bytes 2000000-2000099/{len(data)}"
    assert r.content == data[2000000:2000100]
    # One reader for this client, joined to the fill (or on the blob, had it completed first).
    readers = d.metric("drayage_cache_fill_joins_total") + d.metric("drayage_cache_hits_total")
    assert readers == 1
    # The fill went on to the end and verified: now a hit, ranges included.
    deadline = time.monotonic() + 30
    while True:
        hits = d.metric("drayage_registry_responses_total", 'kind="blob",outcome="hit"')
        r = requests.get(url, headers={"Range": "bytes=-5"}, timeout=30)
        assert r.status_code == 206
        assert r.content == data[-5:]
        if d.metric("drayage_registry_responses_total", 'kind="blob",outcome="hit"') > hits:
            break  # this request was a hit: no other is running
        assert time.monotonic() < deadline, "the blob never became a hit:\n" + d.log()[-2000:]
        time.sleep(0.1)
    readers = d.metric("drayage_cache_hits_total")
    r = requests.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert r.status_code == 416
    assert r.headers["Content-Range"] == f"bytes */{len(data)}"
    assert d.metric("drayage_cache_hits_total") - readers == 1
    r = requests.head(url)
    assert r.status_code == 200 and int(r.headers["Content-Length"]) == len(data)
    assert r.headers["Accept-Ranges"] == "bytes"
    assert r.headers["ETag"] == f'"{layer.digest}"'


def test_head_never_downloads_the_body(upstream, drayage_factory):
    image = upstream.push_image("e2e/head", "v1", [2 * MiB], seed=5)
    layer = image.layers[0]
    d = drayage_factory(mirror_config(upstream.url))
    mark = len(upstream.blob_gets(layer.digest))
    r = requests.head(f"{d.url}/v2/e2e/head/blobs/{layer.digest}")
    assert r.status_code == 200
    assert int(r.headers["Content-Length"]) == 2 * MiB
    assert r.headers["Docker-Content-Digest"] == layer.digest
    upstream.sync()
    assert len(upstream.blob_gets(layer.digest)) == mark


def test_grammar_errors_and_unknowns(upstream, drayage_factory):
    d = drayage_factory(mirror_config(upstream.url))
    zero = "sha256:" + "0" * 64
    r = requests.get(f"{d.url}/v2/e2e/skopeo/blobs/{zero}")
    assert r.status_code == 404
    assert r.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
    r = requests.get(f"{d.url}/v2/e2e/skopeo/manifests/nosuchtag")
    assert r.status_code == 404
    assert r.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    r = requests.get(f"{d.url}/v2/e2e/skopeo/blobs/md5:0000")
    assert r.status_code == 400
    assert r.json()["errors"][0]["code"] == "DIGEST_INVALID"
    r = requests.get(f"{d.url}/v2/E2E/Bad/manifests/v1")
    assert r.status_code == 400
    assert r.json()["errors"][0]["code"] == "NAME_INVALID"
    r = requests.get(f"{d.url}/v2/{'a' * 256}/manifests/v1")
    assert r.status_code == 400
    r = requests.get(f"{d.url}/v2/")
    assert r.status_code == 200 and r.json() == {}
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    tags = requests.get(f"{d.url}/v2/e2e/skopeo/tags/list").json()
    assert tags == {"name": "e2e/skopeo", "tags": ["v1"]}


def test_manifest_responses_carry_digest_and_type(upstream, drayage_factory):
    d = drayage_factory(mirror_config(upstream.url))
    image = upstream.skopeo_image
    r = requests.get(f"{d.url}/v2/e2e/skopeo/manifests/v1", headers={"Accept": ALL_MANIFESTS})
    assert r.status_code == 200
    assert r.content == image.manifest
    assert r.headers["Docker-Content-Digest"] == image.manifest_digest
    assert r.headers["Content-Type"] == "application/vnd.oci.image.manifest.v1+json"
    r = requests.head(f"{d.url}/v2/e2e/skopeo/manifests/{image.manifest_digest}",
                      headers={"Accept": ALL_MANIFESTS})
    assert r.status_code == 200
    assert int(r.headers["Content-Length"]) == len(image.manifest)


def test_upstream_down_serves_cached_and_fails_fast_otherwise(tmp_path, drayage_factory):
    reg = Registry(tmp_path / "up").start()
    try:
        image = reg.push_image("e2e/outage", "v1", [64 * KiB], seed=6)
        other = reg.push_image("e2e/other", "v1", [32 * KiB], seed=7)
        d = drayage_factory(mirror_config(reg.url, manifest_ttl="1s", max_stale="1h"))
        r = skopeo_pull(tmp_path / "sk", f"127.0.0.1:{d.port}", "e2e/outage:v1", tmp_path / "p1")
        assert r.returncode == 0, r.stderr
    finally:
        reg.stop()
    time.sleep(1.2)  # past manifest_ttl: the tag needs revalidation, which now fails

    r = requests.get(f"{d.url}/v2/e2e/outage/manifests/v1", headers={"Accept": ALL_MANIFESTS})
    assert r.status_code == 200
    assert r.headers["Docker-Content-Digest"] == image.manifest_digest
    assert "110" in r.headers.get("Warning", "")
    r = skopeo_pull(tmp_path / "sk2", f"127.0.0.1:{d.port}", "e2e/outage:v1", tmp_path / "p2")
    assert r.returncode == 0, r.stderr

    # Not cached, upstream gone: a quick error (bounded by upstream.connect_timeout, 2 s here),
    # so docker and containerd move on to their next endpoint. A hang would trip the client
    # timeout and fail the test.
    r = requests.get(f"{d.url}/v2/e2e/other/blobs/{other.layers[0].digest}", timeout=30)
    assert r.status_code == 503
    assert r.json()["errors"][0]["code"] == "UNAVAILABLE"


def test_restarted_mirror_serves_known_tags_while_upstream_is_down(tmp_path, drayage_factory):
    """Tag records outlive the process: a mirror restarted during an upstream outage still answers
    the tags it knew (stale, with a Warning) and their images still pull; records older than
    upstream.max_stale are dropped at start and not served."""
    reg = Registry(tmp_path / "up").start()
    try:
        image = reg.push_image("e2e/restart", "v1", [64 * KiB], seed=8)
        d = drayage_factory(mirror_config(reg.url, manifest_ttl="1s", max_stale="1h"),
                            name="restart")
        r = skopeo_pull(tmp_path / "sk", f"127.0.0.1:{d.port}", "e2e/restart:v1", tmp_path / "p1")
        assert r.returncode == 0, r.stderr
    finally:
        reg.stop()
    assert d.stop() == 0
    d.start()
    time.sleep(1.2)  # past manifest_ttl, counted from the pull: revalidation fails, stale it is

    r = requests.get(f"{d.url}/v2/e2e/restart/manifests/v1", headers={"Accept": ALL_MANIFESTS},
                     timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["Docker-Content-Digest"] == image.manifest_digest
    assert r.content == image.manifest
    assert "110" in r.headers.get("Warning", "")
    r = skopeo_pull(tmp_path / "sk2", f"127.0.0.1:{d.port}", "e2e/restart:v1", tmp_path / "p2")
    assert r.returncode == 0, r.stderr
    assert dir_blobs(tmp_path / "p2").keys() == dir_blobs(tmp_path / "p1").keys()

    # Past max_stale by the next start: the record is dropped, and the tag is an upstream error.
    assert d.stop() == 0
    d.config["upstream"]["max_stale"] = "2s"
    time.sleep(2.5)
    d.start()
    r = requests.get(f"{d.url}/v2/e2e/restart/manifests/v1", headers={"Accept": ALL_MANIFESTS},
                     timeout=30)
    assert r.status_code == 503, r.text
    assert "dropped 1 expired tag records" in d.log()
    # By digest it is still a plain cache hit.
    r = requests.get(f"{d.url}/v2/e2e/restart/manifests/{image.manifest_digest}",
                     headers={"Accept": ALL_MANIFESTS}, timeout=30)
    assert r.status_code == 200 and r.content == image.manifest


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_hit_workers_serve_hits_and_hand_everything_else_to_the_main_loop(upstream,
                                                                          drayage_factory,
                                                                          workers):
    """http.workers: connections land on any loop (SO_REUSEPORT); a worker serves complete hits
    and hands any other request, with its connection, to the main loop, also right after a
    large hit on a kept-alive connection whose response may still be going out."""
    cfg = mirror_config(upstream.url)
    cfg["http"] = {"workers": workers}
    d = drayage_factory(cfg, name=f"workers-{workers}")
    image = upstream.skopeo_image
    small, mid = image.layers[0], image.layers[1]
    blob_url = lambda layer: f"{d.url}/v2/e2e/skopeo/blobs/{layer.digest}"  # noqa: E731
    mid_body = mid.path.read_bytes()
    # Cold: whichever loop the connection lands on, the miss is filled by the main loop.
    assert requests.get(blob_url(mid), timeout=60).content == mid_body

    def session_round(i: int) -> None:
        with requests.Session() as s:  # one kept-alive connection per round
            r = s.get(blob_url(mid), timeout=60)
            assert r.status_code == 200 and r.content == mid_body
            # Not a hit: a worker hands the connection over with this request unanswered.
            r = s.get(f"{d.url}/v2/e2e/skopeo/manifests/v1",
                      headers={"Accept": ALL_MANIFESTS}, timeout=60)
            assert r.status_code == 200, r.text
            assert r.headers["Docker-Content-Digest"] == image.manifest_digest
            r = s.get(blob_url(small), timeout=60)  # cold for the first round, then a hit
            assert r.status_code == 200 and len(r.content) == small.size
            r = s.get(blob_url(mid), headers={"Range": "bytes=100-199"}, timeout=60)
            assert r.status_code == 206 and r.content == mid_body[100:200]
            r = s.head(blob_url(mid), timeout=60)
            assert r.status_code == 200 and int(r.headers["Content-Length"]) == mid.size
            r = s.get(f"{d.url}/v2/e2e/skopeo/blobs/sha256:{'0' * 64}", timeout=60)
            assert r.status_code == 404 and r.json()["errors"][0]["code"] == "BLOB_UNKNOWN"

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(session_round, range(24)))
    # Pipelined: a hit, then a manifest behind it in the same packet. On a worker the hand-off
    # waits until the hit's response has left, then the main loop answers the manifest.
    manifest_path = "/v2/e2e/skopeo/manifests/v1"
    for _ in range(16):
        with socket.create_connection(("127.0.0.1", d.port), timeout=60) as sock:
            sock.sendall((f"GET /v2/e2e/skopeo/blobs/{mid.digest} HTTP/1.1\r\nHost: x\r\n\r\n"
                          f"GET {manifest_path} HTTP/1.1\r\nHost: x\r\nAccept: {ALL_MANIFESTS}"
                          f"\r\nConnection: close\r\n\r\n").encode())
            data = b""
            while chunk := sock.recv(1 << 20):
                data += chunk
        head, rest = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert rest[:mid.size] == mid_body
        second = rest[mid.size:]
        assert second.startswith(b"HTTP/1.1 200"), second[:200]
        assert image.manifest_digest.encode() in second
    worker_hits = d.metric("drayage_http_worker_hits_total")
    handoffs = d.metric("drayage_http_handoffs_total")
    if workers == 0:
        assert worker_hits == 0 and handoffs == 0
    else:
        # 24 connections spread over 1 + workers loops: some land on a worker (2^-24 that none
        # does with one worker).
        assert worker_hits > 0 and handoffs > 0, (worker_hits, handoffs)
    assert d.stop() == 0


@pytest.mark.parametrize("workers", [0, 2])
def test_small_blob_hits_are_whole_in_order_and_framed(upstream, drayage_factory, workers):
    """Blobs up to 64 KiB are answered from one read of the cache straight into the response
    (no reader): on the main loop and on the workers, at the size limit and past it, pipelined
    several to a packet, with the same headers as any blob, and ranges still honoured."""
    cfg = mirror_config(upstream.url)
    cfg["http"] = {"workers": workers}
    d = drayage_factory(cfg, name=f"small-{workers}")
    sizes = [1, 16 * KiB, 64 * KiB - 1, 64 * KiB, 64 * KiB + 1, 300 * KiB]
    image = upstream.push_image("e2e/small", "v1", sizes, seed=11)
    bodies = {layer.digest: layer.path.read_bytes() for layer in image.layers}
    path = lambda digest: f"/v2/e2e/small/blobs/{digest}"  # noqa: E731
    for digest, body in bodies.items():  # cold: filled through the main loop
        assert requests.get(d.url + path(digest), timeout=60).content == body
    hits_before = d.metric("drayage_registry_responses_total", 'kind="blob",outcome="hit"')

    # Every blob twice, pipelined in one packet; the last request closes the connection.
    order = list(bodies) * 2
    rounds = 12
    for _ in range(rounds):
        reqs = "".join(f"GET {path(dg)} HTTP/1.1\r\nHost: x\r\n\r\n" for dg in order[:-1])
        reqs += f"GET {path(order[-1])} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        with socket.create_connection(("127.0.0.1", d.port), timeout=60) as sock:
            sock.sendall(reqs.encode())
            data = b""
            while chunk := sock.recv(1 << 20):
                data += chunk
        for i, digest in enumerate(order):
            head, data = data.split(b"\r\n\r\n", 1)
            lines = head.decode().split("\r\n")
            assert lines[0] == "HTTP/1.1 200 OK", (i, lines)
            h = {k.lower(): v for k, v in (ln.split(": ", 1) for ln in lines[1:])}
            body = bodies[digest]
            assert int(h["content-length"]) == len(body)
            assert h["content-type"] == "application/octet-stream"
            assert h["docker-content-digest"] == digest
            assert h["etag"] == f'"{digest}"'
            assert h["accept-ranges"] == "bytes"
            assert h["docker-distribution-api-version"] == "registry/2.0"
            assert (h.get("connection") == "close") == (i == len(order) - 1)
            assert data[:len(body)] == body, (i, len(body))
            data = data[len(body):]
        assert data == b""
    hits = d.metric("drayage_registry_responses_total", 'kind="blob",outcome="hit"')
    assert hits - hits_before == rounds * len(order)
    outcomes = [a["outcome"] for a in d.access("/v2/e2e/small/blobs/")]
    assert outcomes.count("hit") == rounds * len(order), outcomes

    small = image.layers[2]  # 64 KiB - 1
    url = d.url + path(small.digest)
    readers = d.metric("drayage_cache_hits_total")
    r = requests.get(url, headers={"Range": "bytes=100-199"}, timeout=60)
    assert r.status_code == 206 and r.content == bodies[small.digest][100:200]
    assert r.headers["Content-Range"] == f"bytes 100-199/{small.size}"
    # One reader per Range hit: the one that tells the size is narrowed to the range.
    assert d.metric("drayage_cache_hits_total") - readers == 1
    r = requests.head(url, timeout=60)
    assert r.status_code == 200 and int(r.headers["Content-Length"]) == small.size
    assert r.content == b""
    if workers:
        assert d.metric("drayage_http_worker_hits_total") > 0
    assert d.stop() == 0


def test_sigterm_lets_transfers_on_hit_workers_finish(upstream, drayage_factory):
    """SIGTERM: the process exits only after the transfers in flight on every loop (the main one
    and the hit workers) have finished."""
    cfg = mirror_config(upstream.url)
    cfg["http"] = {"workers": 3}
    d = drayage_factory(cfg, name="workers-sigterm")
    mid = upstream.skopeo_image.layers[1]
    body = mid.path.read_bytes()
    path = f"/v2/e2e/skopeo/blobs/{mid.digest}"
    assert requests.get(d.url + path, timeout=60).content == body  # cached now
    socks = []
    for _ in range(6):  # over 4 loops: some land on workers
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)  # keeps the server waiting
        s.connect(("127.0.0.1", d.port))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        socks.append(s)
    firsts = []
    for s in socks:  # every transfer is under way before the signal
        s.settimeout(60)
        firsts.append(s.recv(64 * 1024))
    d.signal(signal.SIGTERM)
    for s, data in zip(socks, firsts):
        while len(data) < mid.size + 200:
            time.sleep(0.002)  # a slow reader: the transfer outlasts the signal
            chunk = s.recv(64 * 1024)
            if not chunk:
                break
            data += chunk
        s.close()
        head, rest = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200")
        assert rest == body
    assert d.proc.wait(timeout=30) == 0


def test_max_connections_counts_the_connections_of_every_loop(upstream, drayage_factory):
    """http.limits.max_connections is one limit for the process: with hit workers, connections
    beyond it are closed at accept whichever loop the kernel hands them to."""
    cfg = mirror_config(upstream.url)
    cfg["http"] = {"workers": 3, "limits": {"max_connections": 4}}
    d = drayage_factory(cfg, name="max-connections")
    small = upstream.skopeo_image.layers[0]
    request = (f"GET /v2/e2e/skopeo/blobs/{small.digest} HTTP/1.1\r\nHost: x\r\n\r\n").encode()
    assert requests.get(f"{d.url}/v2/e2e/skopeo/blobs/{small.digest}", timeout=60).ok

    def served(sock: socket.socket) -> bool:
        """One blob GET answered in full on a kept-alive connection."""
        try:
            sock.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    return False
                data += chunk
            head, body = data.split(b"\r\n\r\n", 1)
            if not head.startswith(b"HTTP/1.1 200"):
                return False
            while len(body) < small.size:
                chunk = sock.recv(65536)
                if not chunk:
                    return False
                body += chunk
            return True
        except OSError:
            return False

    held: list[socket.socket] = []
    deadline = time.monotonic() + 30
    # Connections of the probes above may still be counted until their loop reaps them: an
    # attempt refused meanwhile is retried.
    while len(held) < 4:
        assert time.monotonic() < deadline, f"only {len(held)} connections were served"
        s = socket.create_connection(("127.0.0.1", d.port), timeout=30)
        if served(s):
            held.append(s)
        else:
            s.close()
            time.sleep(0.1)
    # Per-loop counting would let these through on the loops holding fewer than 4.
    for _ in range(12):
        with socket.create_connection(("127.0.0.1", d.port), timeout=30) as extra:
            assert not served(extra), "a connection past max_connections was served"
    held.pop().close()
    deadline = time.monotonic() + 30
    while True:
        with socket.create_connection(("127.0.0.1", d.port), timeout=30) as again:
            if served(again):
                break
        assert time.monotonic() < deadline, "no connection was served after one was closed"
        time.sleep(0.1)
    for s in held:
        s.close()
    assert d.stop() == 0


def test_log_file_reopens_on_sighup_and_takes_the_last_lines_at_exit(upstream, drayage_factory,
                                                                      tmp_path):
    """log.file with logrotate: the file is moved away and SIGHUP reopens it. Lines logged before
    the signal stay in the old file, later ones go to the new one. The lines of the last requests
    before a SIGTERM are in the file when drayage has exited (it writes its log in batches from a
    thread of its own, so they were still in memory when the signal came)."""
    logfile = tmp_path / "access.log"
    cfg = mirror_config(upstream.url)
    cfg["log"] = {"file": str(logfile)}
    d = drayage_factory(cfg, name="logfile")

    def ask(repo: str) -> None:
        requests.get(f"{d.url}/v2/{repo}/app/manifests/v1", timeout=30)

    def wait_for(path: pathlib.Path, text: str) -> str:
        deadline = time.monotonic() + 20
        while True:
            content = path.read_text() if path.exists() else ""
            if text in content:
                return content
            assert time.monotonic() < deadline, f"{text!r} not in {path}:\n{content[-2000:]}"
            time.sleep(0.05)

    ask("before-rotate")
    wait_for(logfile, "before-rotate")
    rotated = tmp_path / "access.log.1"
    logfile.rename(rotated)
    d.signal(signal.SIGHUP)
    wait_for(logfile, "log file reopened")
    ask("after-rotate")
    new = wait_for(logfile, "after-rotate")
    old = rotated.read_text()
    assert "before-rotate" in old and "after-rotate" not in old
    assert "before-rotate" not in new
    ask("before-exit")
    assert d.stop() == 0
    final = logfile.read_text()
    assert "before-exit" in final
    # Logged as serve() returns, microseconds before the process exits.
    assert final.rstrip().endswith("drayage stopped"), final[-500:]
