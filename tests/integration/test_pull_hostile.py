"""An upstream, or a repository writer, that means harm: what drayage does with what they send.

- A manifest naming a digest of another repository (a foreign layer, which docker-registry accepts
  with `validation.manifests.urls.allow`) does not make that blob readable under its repository.
- A blob sent without a length that turns out larger than cache.max_size never takes the cache
  over it.
- Manifests and catalogs built to blow up a JSON DOM cost drayage no more than their size.
- A catalog page size over the limit is the client's error (400), not an outage (503).

Real docker-registry where it can play the part; a small fake registry (FakeRegistry, below) for
what a real one cannot be made to send: chunked blobs, 4 MiB of '[' as a manifest.
"""
import concurrent.futures
import hashlib
import http.server
import json
import socket
import threading
import time
import urllib.request
import uuid

import pytest
import requests

from harness.drayage import Drayage
from harness.net import free_port, wait_until
from harness.registry import ALL_MANIFESTS, DOCKER_MANIFEST, KiB, MiB, Registry
from harness.swift import swift  # noqa: F401 (session fixture)
from test_auth_pull import auth_config
from test_pull_s3 import drayage_s3_block

FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
OCI_NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def vm_hwm_kib(pid: int) -> int:
    """The peak resident set of a process (VmHWM), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/%d/status" % pid)


def get(url: str, **kw):
    """(status, body, complete): complete is False when the connection was cut mid-body."""
    try:
        r = requests.get(url, timeout=120, **kw)
        return r.status_code, r.content, True
    except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError):
        return None, b"", False


# ------------------------------------------------------------------------------------------------
# A manifest is a claim, not proof (docs/auth.md, "Repository/digest proof").

@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """docker-registry accepting foreign layers; team/secret holds a private layer, public/evil
    holds manifests naming it as a foreign layer (schema2) and a non-distributable one (OCI)."""
    wd = tmp_path_factory.mktemp("foreign")
    reg = Registry(wd / "reg", extra={"validation": {"manifests": {"urls": {
        "allow": ["^https?://"]}}}}).start()
    reg.secret = reg.push_image("team/secret", "v1", [4 * KiB, 3 * MiB], seed=31)
    base = reg.push_image("public/evil", "base", [2 * KiB], seed=32)
    reg.base = base
    private = reg.secret.layers[1]
    for tag, manifest_type, layer_type in [
            ("v1", DOCKER_MANIFEST, FOREIGN_LAYER),
            ("v2", "application/vnd.oci.image.manifest.v1+json", OCI_NONDISTRIBUTABLE)]:
        config_type = ("application/vnd.docker.container.image.v1+json"
                       if manifest_type == DOCKER_MANIFEST
                       else "application/vnd.oci.image.config.v1+json")
        doc = {"schemaVersion": 2, "mediaType": manifest_type,
               "config": {"mediaType": config_type, "digest": base.config.digest,
                          "size": base.config.size},
               "layers": [{"mediaType": layer_type, "digest": private.digest,
                           "size": private.size, "urls": ["https://example.invalid/layer"]}]}
        req = urllib.request.Request(f"{reg.url}/v2/public/evil/manifests/{tag}", method="PUT",
                                     data=json.dumps(doc).encode(),
                                     headers={"Content-Type": manifest_type})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 201
    # The registry itself does not serve the private layer under public/evil.
    assert reg.get(f"/v2/public/evil/blobs/{private.digest}")[0] == 404
    yield reg
    reg.stop()


def foreign_mirror(build_dir, workdir, reg) -> Drayage:
    rules = [{"repositories": ["team/**"], "pull": ["alice"]},
             {"repositories": ["public/**"], "pull": ["*"]}]
    return Drayage(build_dir / "src" / "drayage", workdir, {
        "upstream": {"url": reg.url, "connect_timeout": "2s", "response_timeout": "10s"},
        "auth": auth_config(workdir, rules),
        "http": {"workers": 2},  # hit workers too: they must refuse it as the loop does
    }).start()


def evil_reads(d, reg, digest: str) -> list:
    """Anonymous reads of `digest` under public/evil after fetching the manifests naming it,
    each on a new connection (so every loop sees them): their statuses and body sizes."""
    for tag in ("v1", "v2"):
        r = requests.get(f"{d.url}/v2/public/evil/manifests/{tag}",
                         headers={"Accept": ALL_MANIFESTS}, timeout=30)
        assert r.status_code == 200 and digest in r.text
    out = []
    url = f"{d.url}/v2/public/evil/blobs/{digest}"
    for _ in range(6):
        for method, headers in [("GET", {}), ("HEAD", {}), ("GET", {"Range": "bytes=0-99"})]:
            with requests.Session() as s:
                r = s.request(method, url, headers=headers, timeout=30)
            out.append((method, r.status_code, len(r.content)))
    return out


def test_a_manifest_naming_a_private_digest_does_not_open_it(build_dir, tmp_path, foreign):
    private = foreign.secret.layers[1]
    d = foreign_mirror(build_dir, tmp_path / "m", foreign)
    try:
        # Not cached: the claim alone opens nothing.
        assert {(m, s) for m, s, _ in evil_reads(d, foreign, private.digest)} == {
            ("GET", 404), ("HEAD", 404)}

        # alice pulls the private layer into the cache; an anonymous client asking for it under
        # public/evil, whose manifests name it, still gets 404, from every loop.
        r = requests.get(f"{d.url}/v2/team/secret/blobs/{private.digest}", auth=("alice", "pw"),
                         timeout=60)
        assert r.status_code == 200 and sha256(r.content) == private.digest
        reads = evil_reads(d, foreign, private.digest)
        assert {(m, s) for m, s, _ in reads} == {("GET", 404), ("HEAD", 404)}, reads
        assert all(n < 1000 for _, _, n in reads)
        assert d.metric("drayage_registry_responses_total", 'outcome="unproven"') > 0

        # What public/evil really holds (its config) is served: proven by one upstream HEAD,
        # remembered, then hits, some on the hit workers.
        config = foreign.base.config
        path = f"/v2/public/evil/blobs/{config.digest}"
        mark = len(foreign.requests())
        for _ in range(12):
            with requests.Session() as s:
                r = s.get(d.url + path, timeout=30)
            assert r.status_code == 200 and sha256(r.content) == config.digest

        def heads():
            return foreign.wait_for_requests(
                lambda q: q["method"] == "HEAD" and q["path"] == path, 1, since=mark)

        assert len(heads()) == 1
        time.sleep(0.5)  # the registry logs after the response: no second HEAD comes
        assert len(heads()) == 1
        assert d.metric("drayage_http_worker_hits_total") > 0
    finally:
        d.stop()


# ------------------------------------------------------------------------------------------------
# A fake registry for what a real one cannot be made to send.

class FakeRegistry:
    """Serves what it is given: manifests (`manifests[(repo, tag)] = (media type, bytes)`), blobs
    sent chunked without a Content-Length (`blobs[digest] = bytes`), and a catalog body."""

    def __init__(self):
        self.port = free_port()
        self.manifests = {}
        self.blobs = {}
        self.catalog = b'{"repositories":[]}'
        self.blob_gets = 0
        self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeRegistry":
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status, body=b"", headers=None, send_body=True):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if send_body:
                    self.wfile.write(body)

            def _chunked(self, data: bytes):
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for i in range(0, len(data), MiB):
                    piece = data[i:i + MiB]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")

            def _serve(self, send_body: bool):
                path = self.path.split("?", 1)[0]
                if path == "/v2/":
                    return self._send(200, b"{}", send_body=send_body)
                if path == "/v2/_catalog":
                    return self._send(200, owner.catalog, {"Content-Type": "application/json"},
                                      send_body)
                repo, kind, ref = path[len("/v2/"):].rsplit("/", 2)
                if kind == "manifests" and (repo, ref) in owner.manifests:
                    media_type, body = owner.manifests[(repo, ref)]
                    return self._send(200, body, {"Content-Type": media_type,
                                                  "Docker-Content-Digest": sha256(body)},
                                      send_body)
                if kind == "blobs" and ref in owner.blobs:
                    if not send_body:
                        return self._send(200, send_body=False)
                    owner.blob_gets += 1
                    return self._chunked(owner.blobs[ref])
                self._send(404, b'{"errors":[{"code":"NOT_FOUND","message":"unknown"}]}',
                           send_body=send_body)

            def do_GET(self):
                self._serve(True)

            def do_HEAD(self):
                self._serve(False)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture
def fake():
    f = FakeRegistry().start()
    yield f
    f.stop()


# ------------------------------------------------------------------------------------------------
# A blob of unknown length, larger than the cache.

BIG = hashlib.sha256(b"big").digest() * (100 * MiB // 32)  # 100 MiB, over a 64 MiB cache


def test_a_blob_without_a_length_larger_than_the_cache_is_not_cached(fake, drayage_factory,
                                                                    tmp_path):
    max_size = 64 * MiB
    small = [bytes([i]) * (4 * MiB) for i in range(3)]
    big = BIG
    for b in small + [big]:
        fake.blobs[sha256(b)] = b
    d = drayage_factory({"upstream": {"url": fake.url},
                         "cache": {"path": str(tmp_path / "cache"), "max_size": "64MiB"}})
    for b in small:
        assert get(f"{d.url}/v2/x/y/blobs/{sha256(b)}")[:2] == (200, b)

    charged = []
    sampling = threading.Event()

    def sample():
        while not sampling.is_set():
            charged.append(d.metric("drayage_cache_charged_bytes"))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    url = f"{d.url}/v2/x/y/blobs/{sha256(big)}"
    try:
        # Two clients join the fill; it stops at max_size. Each gets the blob whole and right,
        # or a cut connection: never a complete-looking body of other bytes.
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = list(pool.map(lambda _: get(url), range(2)))
        for status, body, complete in first:
            assert not complete or (status, sha256(body)) == (200, sha256(big))
        # Later requests: streamed uncached (the digest is remembered), whole and verified.
        for _ in range(2):
            status, body, complete = get(url)
            assert complete and status == 200 and body == big
        # HTTP/1.0 could only frame that stream by the close, where a cut at a digest mismatch
        # would look complete: refused before any body.
        with socket.create_connection(("127.0.0.1", d.port), timeout=60) as s:
            s.sendall(f"GET /v2/x/y/blobs/{sha256(big)} HTTP/1.0\r\n\r\n".encode())
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.split(b" ", 2)[1] == b"503", head
        assert json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"
    finally:
        sampling.set()
        sampler.join()
    charged.append(d.metric("drayage_cache_charged_bytes"))
    assert max(charged) <= max_size, max(charged)
    assert d.metric("drayage_cache_over_limit_total") == 0
    assert d.metric("drayage_cache_fills_started_total") == len(small) + 1
    assert d.metric("drayage_registry_responses_total", 'outcome="uncached"') >= 2
    # The file holds no more than max_size of data: LMDB's own pages besides.
    assert (tmp_path / "cache" / "data.mdb").stat().st_size <= max_size + 8 * MiB
    assert "not cached" in d.log()


def test_a_copy_to_the_bucket_of_such_a_blob_is_abandoned(fake, swift, drayage_factory):  # noqa: F811
    """With storage.s3.writethrough the fill's bytes also go to the bucket as a multipart
    upload: when the fill stops at max_size, the upload is aborted, not left open."""
    root = f"/hostile-{uuid.uuid4().hex[:8]}"
    fake.blobs[sha256(BIG)] = BIG
    d = drayage_factory({"upstream": {"url": fake.url}, "cache": {"max_size": "64MiB"},
                         "storage": {"s3": drayage_s3_block(swift, root, writethrough=True)}})
    status, body, complete = get(f"{d.url}/v2/x/y/blobs/{sha256(BIG)}")
    assert not complete or (status, body == BIG) == (200, True)
    s3 = swift.client()
    deadline = time.monotonic() + 60
    while s3.list_multipart_uploads(Bucket=swift.bucket, Prefix=root.strip("/")).get("Uploads"):
        assert time.monotonic() < deadline, "the copy to the bucket was left open"
        time.sleep(0.2)
    assert get(f"{d.url}/v2/x/y/blobs/{sha256(BIG)}")[:2] == (200, BIG)
    assert "write-through of " + sha256(BIG) + " abandoned" in d.log()


# ------------------------------------------------------------------------------------------------
# JSON bombs.

def test_hostile_manifests_cost_no_more_than_their_size(fake, drayage_factory):
    cap = 4 * MiB  # UpstreamRegistry::kMaxManifestBytes
    manifest_type = "application/vnd.oci.image.manifest.v1+json"
    brackets = b"[" * cap
    depth = (cap - 16) // 2
    nested = b'{"a":' + b"[" * depth + b"]" * depth + b"}"
    fake.manifests[("bomb/x", "open")] = (manifest_type, brackets)
    fake.manifests[("bomb/x", "deep")] = (manifest_type, nested)
    d = drayage_factory({"upstream": {"url": fake.url}})
    assert requests.get(f"{d.url}/v2/", timeout=10).status_code == 200
    before = vm_hwm_kib(d.proc.pid)
    for tag, body in [("open", brackets), ("deep", nested)]:
        for _ in range(2):
            r = requests.get(f"{d.url}/v2/bomb/x/manifests/{tag}",
                             headers={"Accept": manifest_type}, timeout=60)
            # Passed on as the registry holds it (digest checked): the client judges it.
            assert r.status_code == 200 and r.content == body
            assert r.headers["Docker-Content-Digest"] == sha256(body)
    grown = vm_hwm_kib(d.proc.pid) - before
    assert grown < 64 * 1024, f"VmHWM grew by {grown} KiB"
    assert d.proc.poll() is None
    assert requests.get(f"{d.url}/v2/", timeout=10).status_code == 200


def test_a_hostile_catalog_is_refused_without_a_dom(fake, build_dir, tmp_path):
    fake.catalog = b'{"repositories":' + b"[" * (8 * MiB)
    d = Drayage(build_dir / "src" / "drayage", tmp_path / "cat", {
        "upstream": {"url": fake.url},
        "auth": auth_config(tmp_path / "cat", [{"repositories": ["**"], "pull": ["alice"]}]),
    }).start()
    try:
        before = vm_hwm_kib(d.proc.pid)
        r = requests.get(f"{d.url}/v2/_catalog", auth=("alice", "pw"), timeout=60)
        assert r.status_code == 502 and r.json()["errors"][0]["code"] == "UNKNOWN"
        grown = vm_hwm_kib(d.proc.pid) - before
        assert grown < 64 * 1024, f"VmHWM grew by {grown} KiB"
        fake.catalog = b'{"repositories":["a/b","c/d"]}'
        r = requests.get(f"{d.url}/v2/_catalog", auth=("alice", "pw"), timeout=60)
        assert r.status_code == 200 and r.json() == {"repositories": ["a/b", "c/d"]}
    finally:
        d.stop()


# ------------------------------------------------------------------------------------------------
# Catalog page size.

def test_catalog_page_size_over_the_limit_is_a_client_error(tmp_path, drayage_factory):
    """docker-registry 2.8.2 answers 400 PAGINATION_NUMBER_INVALID for n over
    catalog.maxentries (default 1000); drayage answers the same itself. Below it, drayage pages
    the whole catalog it read itself, whatever the upstream's own limit (test_spec_pull.py)."""
    reg = Registry(tmp_path / "reg", extra={"catalog": {"maxentries": 5}}).start()
    try:
        reg.push_image("some/repo", "v1", [KiB], seed=33)
        d = drayage_factory({"upstream": {"url": reg.url}})
        none = drayage_factory({}, name="no-upstream")
        for mirror in (d, none):
            for n in ("1001", "1000000", "99999999999999999999999"):
                r = requests.get(f"{mirror.url}/v2/_catalog", params={"n": n}, timeout=30)
                assert r.status_code == 400, (n, r.status_code)
                assert r.json()["errors"][0]["code"] == "PAGINATION_NUMBER_INVALID"
                assert "at most 1000" in r.json()["errors"][0]["message"]
        for q in ("n=5", "n=6", "last=a"):
            r = requests.get(f"{d.url}/v2/_catalog?{q}", timeout=30)
            assert r.status_code == 200 and "some/repo" in r.json()["repositories"], q
    finally:
        reg.stop()


def test_a_corrupt_blob_is_never_written_through_to_the_bucket(fake, swift, drayage_factory):  # noqa: F811
    """storage.s3.writethrough tees the upstream's bytes into a multipart upload, completed only
    once the cache's own sha256 of the fill (the one hash of those bytes) matched: bytes that
    fail their digest are aborted, never published in the shared tier."""
    root = f"/hostile-{uuid.uuid4().hex[:8]}"
    good = hashlib.sha256(b"good").digest() * (3 * MiB // 32)
    bad = bytearray(good)
    bad[2 * MiB] ^= 1
    fake.blobs[sha256(good)] = bytes(bad)
    d = drayage_factory({"upstream": {"url": fake.url},
                         "storage": {"s3": drayage_s3_block(swift, root, writethrough=True)}})
    status, body, complete = get(f"{d.url}/v2/x/y/blobs/{sha256(good)}")
    assert not complete, (status, len(body))
    s3 = swift.client()
    wait_until(lambda: f"write-through of {sha256(good)} abandoned" in d.log(),
               "the corrupt copy's upload aborted", 60)
    assert not s3.list_multipart_uploads(Bucket=swift.bucket,
                                         Prefix=root.strip("/")).get("Uploads")
    assert s3.list_objects_v2(Bucket=swift.bucket, Prefix=root.strip("/")).get("KeyCount") == 0
    # The right bytes are written through.
    fake.blobs[sha256(good)] = good
    assert get(f"{d.url}/v2/x/y/blobs/{sha256(good)}") == (200, good, True)
    wait_until(lambda: s3.list_objects_v2(Bucket=swift.bucket, Prefix=root.strip("/"))
               .get("KeyCount") == 1, "the verified copy in the bucket", 60)
    assert "write-through of " + sha256(good) + " to the bucket complete" in d.log()
