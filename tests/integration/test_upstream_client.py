"""The upstream registry client (src/registry/upstream) against real docker-registry processes.

Drives tests/unit/registry/upstream/upstream_tool, which runs UpstreamRegistry on a libevent loop
and prints one JSON line per operation plus a summary line. Peers: docker-registry (plain,
htpasswd, token auth with harness/tokenserver.py, redirecting blob GETs to a second server), and
small socket fakes only for faults a real registry cannot be made to produce (silence, stalls,
resets).
"""
import hashlib
import json
import os
import pathlib
import socket
import subprocess
import threading

import pytest

from harness.net import free_port
from harness.registry import (ALL_MANIFESTS, DOCKER_MANIFEST, KiB, MiB, OCI_MANIFEST, Registry,
                              StorageFileServer, s3_storage)
from harness.swift import swift  # noqa: F401 (session fixture)
from harness.tokenserver import TokenServer

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tool() -> pathlib.Path:
    d = pathlib.Path(os.environ.get("DRAYAGE_BUILD_DIR", ROOT / "build")).resolve()
    path = d / "tests" / "unit" / "registry" / "upstream" / "upstream_tool"
    if not path.exists():
        pytest.fail(f"no {path}; build it (ninja -C {d} {path.relative_to(d)})")
    return path


def run(tool, url, *args, stdin=None, timeout=120, process=False):
    """Runs upstream_tool; returns (results, summary, completed process)."""
    cmd = [str(tool), "--url", url, *[str(a) for a in args]]
    if process:
        return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=stdin)
    # A sanitizer build (-Db_sanitize=address,undefined) reports on stderr: any report fails.
    assert "Sanitizer" not in p.stderr and "runtime error:" not in p.stderr, p.stderr
    lines = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    assert lines and lines[-1].get("summary"), (p.returncode, p.stdout, p.stderr)
    return lines[:-1], lines[-1], p


def one(tool, url, *args, **kw):
    results, summary, p = run(tool, url, *args, **kw)
    assert len(results) == 1, p.stdout
    return results[0]


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


# --- plain registry ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("plain")).start()
    image = reg.push_image("team/app", "v1", [KiB, 5 * MiB + 3, 64 * MiB], seed=7)
    yield reg, image
    reg.stop()


def test_manifest_get_by_tag_and_digest(tool, plain):
    reg, image = plain
    r = one(tool, reg.url, "manifest", "team/app", "v1", "--accept", ALL_MANIFESTS)
    assert r["ok"], r
    assert r["status"] == 200
    assert r["media_type"] == OCI_MANIFEST
    assert r["digest"] == image.manifest_digest
    assert r["body"].encode() == image.manifest
    assert r["size"] == len(image.manifest)

    by_digest = one(tool, reg.url, "manifest", "team/app", image.manifest_digest,
                    "--accept", OCI_MANIFEST)
    assert by_digest["ok"] and by_digest["body"].encode() == image.manifest


def test_manifest_head_and_accept_passthrough(tool, plain):
    reg, image = plain
    head = one(tool, reg.url, "manifest", "team/app", "v1", "--head", "--accept", ALL_MANIFESTS)
    assert head["ok"], head
    assert head["digest"] == image.manifest_digest
    assert head["size"] == len(image.manifest)
    assert head["body"] == ""
    # An OCI manifest asked for as Docker schema2 only: docker-registry answers 404 (it cannot
    # convert), which proves the Accept header went through as given.
    only_docker = one(tool, reg.url, "manifest", "team/app", "v1", "--accept", DOCKER_MANIFEST)
    assert not only_docker["ok"]
    assert only_docker["code"] == "NOT_FOUND" and only_docker["status"] == 404
    assert "MANIFEST_UNKNOWN" in only_docker["message"]


def test_missing_manifest_and_blob_are_not_found(tool, plain):
    reg, _ = plain
    r = one(tool, reg.url, "manifest", "team/app", "nope", "--accept", ALL_MANIFESTS)
    assert (r["ok"], r["code"], r["status"]) == (False, "NOT_FOUND", 404)
    missing = "sha256:" + "0" * 64
    r = one(tool, reg.url, "blob", "team/app", missing)
    assert (r["ok"], r["code"], r["status"]) == (False, "NOT_FOUND", 404)
    assert "BLOB_UNKNOWN" in r["message"]
    r = one(tool, reg.url, "head-blob", "team/app", missing)
    assert (r["ok"], r["code"]) == (False, "NOT_FOUND")


def test_head_blob(tool, plain):
    reg, image = plain
    layer = image.layers[1]
    r = one(tool, reg.url, "head-blob", "team/app", layer.digest)
    assert r["ok"], r
    assert r["size"] == layer.size
    assert r["digest"] == layer.digest


@pytest.mark.parametrize("index", [0, 1, 2])
def test_blob_get_streams_exact_bytes(tool, plain, tmp_path, index):
    reg, image = plain
    layer = image.layers[index]
    out = tmp_path / "blob"
    before = len(reg.blob_gets(layer.digest))
    r = one(tool, reg.url, "blob", "team/app", layer.digest, "--out", out)
    assert r["ok"], r
    assert r["size"] == layer.size == out.stat().st_size
    assert r["sha256"] == layer.digest == sha256_file(out)
    assert len(reg.wait_for_requests(
        lambda q: q["method"] == "GET" and q["path"].endswith(layer.digest), before + 1)) == \
        before + 1


def test_blob_get_with_flow_control_pauses(tool, plain, tmp_path):
    reg, image = plain
    layer = image.layers[2]
    r = one(tool, reg.url, "blob", "team/app", layer.digest, "--pause-every", 256 * KiB)
    assert r["ok"], r
    assert r["sha256"] == layer.digest
    # 64 MiB, paused after every 256 KiB or so (pieces arrive in curl-sized chunks) and resumed
    # from a loop timer, as a cache fill does when its buffer drains.
    assert r["pauses"] >= layer.size // (512 * KiB)


def test_blob_to_stdout(tool, plain):
    reg, image = plain
    layer = image.layers[0]
    p = subprocess.run([str(tool), "--url", reg.url, "blob", "team/app", layer.digest,
                        "--out", "-"], capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "sha256:" + hashlib.sha256(p.stdout).hexdigest() == layer.digest
    assert json.loads(p.stderr.decode().splitlines()[0])["sha256"] == layer.digest


def test_blob_range(tool, plain, tmp_path):
    reg, image = plain
    layer = image.layers[1]
    data = layer.path.read_bytes()
    r = one(tool, reg.url, "blob", "team/app", layer.digest, "--range", "1000-4999",
            "--out", tmp_path / "part")
    assert r["ok"], r
    assert r["status"] == 206
    assert r["content_range"] == f"bytes 1000-4999/{layer.size}"
    assert (tmp_path / "part").read_bytes() == data[1000:5000]
    tail = one(tool, reg.url, "blob", "team/app", layer.digest, "--range", f"{layer.size - 10}-",
               "--out", tmp_path / "tail")
    assert tail["ok"] and (tmp_path / "tail").read_bytes() == data[-10:]


def test_tags_and_catalog_passthrough(tool, plain):
    reg, _ = plain
    r = one(tool, reg.url, "tags", "team/app")
    assert r["ok"], r
    assert json.loads(r["body"]) == {"name": "team/app", "tags": ["v1"]}
    r = one(tool, reg.url, "catalog", "--query", "n=10")
    assert r["ok"], r
    assert "team/app" in json.loads(r["body"])["repositories"]
    missing = one(tool, reg.url, "tags", "no/such")
    assert (missing["ok"], missing["code"]) == (False, "NOT_FOUND")


def test_metrics_count_upstream_requests(tool, plain):
    reg, image = plain
    results, summary, p = run(tool, reg.url, "--repeat", 3, "--metrics", "manifest", "team/app",
                              "v1", "--accept", ALL_MANIFESTS)
    assert summary["ok"] == 3
    assert 'drayage_upstream_requests_total{op="manifest_get",status="200"} 3' in p.stderr


# --- Basic auth (htpasswd) --------------------------------------------------------------------

@pytest.fixture(scope="module")
def basic(tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("basic"), htpasswd={"alice": "s3cret"}).start()
    image = reg.push_image("team/app", "v1", [2 * MiB], creds="alice:s3cret")
    yield reg, image
    reg.stop()


def test_basic_auth(tool, basic, tmp_path):
    reg, image = basic
    layer = image.layers[0]
    mark = len(reg.requests())
    anon = one(tool, reg.url, "blob", "team/app", layer.digest)
    assert (anon["ok"], anon["code"], anon["status"]) == (False, "UNAUTHORIZED", 401)
    wrong = one(tool, reg.url, "--user", "alice", "--password", "nope", "blob", "team/app",
                layer.digest)
    assert (wrong["ok"], wrong["code"]) == (False, "UNAUTHORIZED")
    ok = one(tool, reg.url, "--user", "alice", "--password", "s3cret", "blob", "team/app",
             layer.digest)
    assert ok["ok"], ok
    assert ok["sha256"] == layer.digest
    # Per attempt, the first GET is anonymous (401 challenge) and the retry carries Basic
    # credentials: anonymous 401, wrong password 401 + 401, right password 401 + 200.
    gets = reg.wait_for_requests(lambda r: r["method"] == "GET" and
                                 r["path"].endswith(layer.digest), 5, since=mark)
    assert [r["status"] for r in gets] == [401, 401, 401, 401, 200]


# --- Bearer tokens ----------------------------------------------------------------------------

@pytest.fixture
def token_registry(tmp_path):
    tokens = TokenServer(tmp_path / "tokens",
                         users={"pusher": {"password": "push", "access": {"*": ["pull", "push"]}},
                                "alice": {"password": "pw", "access": {"team/*": ["pull"]}}}
                         ).start()
    reg = Registry(tmp_path / "reg", token=tokens).start()
    image = reg.push_image("team/app", "v1", [3 * MiB], creds="pusher:push")
    yield reg, tokens, image
    reg.stop()
    tokens.stop()


def test_token_auth_anonymous_denied(tool, token_registry):
    reg, tokens, image = token_registry
    r = one(tool, reg.url, "blob", "team/app", image.layers[0].digest)
    assert (r["ok"], r["code"], r["status"]) == (False, "UNAUTHORIZED", 401)
    anon = [t for t in tokens.token_requests() if t["user"] == ""]
    assert len(anon) == 1
    assert anon[0]["scopes"] == ["repository:team/app:pull"]
    assert anon[0]["access"] == []


def test_token_auth_wrong_password(tool, token_registry):
    reg, tokens, image = token_registry
    r = one(tool, reg.url, "--user", "alice", "--password", "bad", "manifest", "team/app", "v1",
            "--accept", ALL_MANIFESTS)
    # The token endpoint refused the credentials themselves (not one repository).
    assert (r["ok"], r["code"], r["status"]) == (False, "TOKEN_REFUSED", 401)
    assert "token endpoint" in r["message"]
    assert len(tokens.token_requests(status=401)) == 1


def test_token_auth_pull_and_token_reuse(tool, token_registry):
    reg, tokens, image = token_registry
    layer = image.layers[0]
    before = len(tokens.token_requests())
    mark = len(reg.requests())
    # Five rounds in one process: one challenge, one token fetch, then the cached token.
    results, summary, p = run(tool, reg.url, "--user", "alice", "--password", "pw", "--repeat", 5,
                              "blob", "team/app", layer.digest)
    assert summary["ok"] == 5 and summary["failed"] == 0, p.stdout
    assert all(r["sha256"] == layer.digest for r in results)
    assert summary["token_fetches"] == 1
    asked = tokens.token_requests()[before:]
    assert len(asked) == 1
    assert asked[0]["user"] == "alice"
    assert asked[0]["scopes"] == ["repository:team/app:pull"]
    assert asked[0]["access"] == [{"type": "repository", "name": "team/app",
                                   "actions": ["pull"]}]
    # Only the first request was turned away (401): five blob GETs succeeded.
    gets = reg.wait_for_requests(lambda r: r["path"].endswith(layer.digest), 6, since=mark)
    assert sorted(r["status"] for r in gets) == [200] * 5 + [401]


def test_token_single_flight_across_parallel_requests(tool, token_registry):
    reg, tokens, image = token_registry
    before = len(tokens.token_requests())
    results, summary, p = run(tool, reg.url, "--user", "alice", "--password", "pw",
                              "--parallel", 8, "manifest", "team/app", "v1",
                              "--accept", ALL_MANIFESTS)
    assert summary["ok"] == 8, p.stdout
    assert summary["token_fetches"] == 1
    assert len(tokens.token_requests()) - before == 1


def test_token_response_with_access_token_only_and_no_expiry(tool, token_registry):
    reg, tokens, image = token_registry
    tokens.token_fields = ("access_token",)
    tokens.send_expires_in = False
    tokens.send_issued_at = False
    results, summary, p = run(tool, reg.url, "--user", "alice", "--password", "pw", "--repeat", 2,
                              "head-blob", "team/app", image.layers[0].digest)
    assert summary["ok"] == 2, p.stdout
    assert summary["token_fetches"] == 1  # default 60 s lifetime: still cached for round 2


def test_rejected_cached_token_is_dropped_and_retried_once(tool, tmp_path):
    """The registry starts trusting another token issuer between two requests: the cached token
    is refused (401), dropped, and a new one is fetched from the new realm."""
    first = TokenServer(tmp_path / "t1", users={"alice": {"password": "pw",
                                                          "access": {"*": ["pull", "push"]}}})
    second = TokenServer(tmp_path / "t2", users={"alice": {"password": "pw",
                                                           "access": {"*": ["pull"]}}})
    first.start()
    second.start()
    reg = Registry(tmp_path / "reg", token=first).start()
    try:
        image = reg.push_image("team/app", "v1", [KiB], creds="alice:pw")
        digest = image.layers[0].digest
        mark = len(reg.requests())
        p = run(tool, reg.url, "--user", "alice", "--password", "pw", "--repeat", 2,
                "--wait-stdin", "head-blob", "team/app", digest, process=True)
        assert p.stderr.readline().strip() == "round done"
        port = reg.port
        reg.stop()
        reg = Registry(tmp_path / "reg", token=second, port=port).start()
        out, err = p.communicate("go\n", timeout=60)
        lines = [json.loads(x) for x in out.splitlines()]
        assert [x.get("ok") for x in lines[:2]] == [True, True], (out, err)
        assert lines[2]["token_fetches"] == 2
        assert len(first.token_requests(status=200)) >= 1  # skopeo's push asked too
        assert len(second.token_requests(status=200)) == 1
        # Round 1: anonymous 401, then 200 with the first token. Round 2 (new issuer): the cached
        # token gets 401, the retry with a fresh token 200: one retry, not more.
        heads = reg.wait_for_requests(lambda r: r["method"] == "HEAD" and
                                      r["path"].endswith(digest), 4, since=mark)
        assert [r["status"] for r in heads] == [401, 200, 401, 200]
        assert len(reg.requests()) - mark == 4
    finally:
        reg.stop()
        first.stop()
        second.stop()


# --- redirects --------------------------------------------------------------------------------

def test_redirected_blob_get_does_not_leak_authorization(tool, tmp_path):
    files = StorageFileServer(tmp_path / "reg" / "storage").start()
    reg = Registry(tmp_path / "reg", htpasswd={"alice": "pw"}, redirect_baseurl=files.url).start()
    try:
        image = reg.push_image("team/app", "v1", [4 * MiB + 512], creds="alice:pw")
        layer = image.layers[0]
        files.requests.clear()
        mark = len(reg.requests())
        r = one(tool, reg.url, "--user", "alice", "--password", "pw", "blob", "team/app",
                layer.digest, "--out", tmp_path / "blob")
        assert r["ok"], r
        assert r["sha256"] == layer.digest == sha256_file(tmp_path / "blob")
        assert r["effective_url"].startswith(files.url)
        # The registry challenged the anonymous try and answered 307 to the authenticated one...
        gets = reg.wait_for_requests(
            lambda q: q["method"] == "GET" and q["path"].endswith(layer.digest), 2, since=mark)
        assert [q["status"] for q in gets] == [401, 307]
        # ...and the other host got the bytes request without the credentials.
        assert len(files.requests) == 1
        assert files.requests[0]["path"].endswith("/" + layer.digest.split(":")[1] + "/data")
        assert files.requests[0]["authorization"] is None

        part = one(tool, reg.url, "--user", "alice", "--password", "pw", "blob", "team/app",
                   layer.digest, "--range", "100-199", "--out", tmp_path / "part")
        assert part["ok"] and part["status"] == 206, part
        assert (tmp_path / "part").read_bytes() == layer.path.read_bytes()[100:200]
        assert files.requests[-1]["range"] == "bytes=100-199"
        assert files.requests[-1]["authorization"] is None
    finally:
        reg.stop()
        files.stop()


def test_redirect_with_token_auth_does_not_leak_bearer(tool, tmp_path):
    files = StorageFileServer(tmp_path / "reg" / "storage").start()
    tokens = TokenServer(tmp_path / "tokens",
                         users={"alice": {"password": "pw", "access": {"*": ["pull", "push"]}}})
    tokens.start()
    reg = Registry(tmp_path / "reg", token=tokens, redirect_baseurl=files.url).start()
    try:
        image = reg.push_image("team/app", "v1", [KiB * 8], creds="alice:pw")
        files.requests.clear()
        r = one(tool, reg.url, "--user", "alice", "--password", "pw", "blob", "team/app",
                image.layers[0].digest)
        assert r["ok"] and r["sha256"] == image.layers[0].digest, r
        assert [q["authorization"] for q in files.requests] == [None]
    finally:
        reg.stop()
        tokens.stop()
        files.stop()


def test_redirect_to_presigned_s3_url(tool, tmp_path, swift):  # noqa: F811
    """docker-registry on Swift answers blob GETs with 307 to a presigned S3 URL: the real-world
    redirect. (Swift ignores a stray Basic Authorization header next to a presigned query, so
    this cannot show that credentials stay behind; the StorageFileServer tests above do.)"""
    root = f"/upstream-{tmp_path.name}"
    reg = Registry(tmp_path / "reg", s3=s3_storage(swift, root), htpasswd={"alice": "pw"}).start()
    try:
        image = reg.push_image("team/app", "v1", [6 * MiB + 1024], creds="alice:pw")
        layer = image.layers[0]
        mark = swift.log_mark()
        r = one(tool, reg.url, "--user", "alice", "--password", "pw", "blob", "team/app",
                layer.digest, "--out", tmp_path / "blob")
        assert r["ok"], r
        assert r["sha256"] == layer.digest == sha256_file(tmp_path / "blob")
        assert r["effective_url"].startswith(swift.endpoint)
        assert "X-Amz-Signature=" in r["effective_url"]
        data_gets = [q for q in swift.s3_requests(mark) if q.method == "GET" and
                     q.path.split("?")[0].endswith(layer.digest.split(":")[1] + "/data")]
        assert [q.status for q in data_gets] == [200]
    finally:
        reg.stop()


# --- failures ---------------------------------------------------------------------------------

def test_no_upstream_configured(tool):
    r = one(tool, "", "manifest", "a/b", "v1")
    assert (r["ok"], r["code"]) == (False, "UNREACHABLE")
    r = one(tool, "", "blob", "a/b", "sha256:" + "1" * 64)
    assert (r["ok"], r["code"]) == (False, "UNREACHABLE")


def test_upstream_down_is_unreachable(tool):
    port = free_port()  # nothing listens there
    r = one(tool, f"http://127.0.0.1:{port}", "--connect-timeout", 2000, "manifest", "a/b", "v1")
    assert (r["ok"], r["code"], r["status"]) == (False, "UNREACHABLE", 0)
    r = one(tool, f"http://127.0.0.1:{port}", "--connect-timeout", 2000, "blob", "a/b",
            "sha256:" + "1" * 64)
    assert (r["ok"], r["code"]) == (False, "UNREACHABLE")


class FakePeer:
    """A TCP listener on 127.0.0.1 that does one scripted thing per connection: `silent` accepts
    and never answers, `stall` sends a head promising 1 MiB and 10 bytes of it, `reset` does the
    same then closes with RST, `reply` sends `reply` bytes and closes."""

    def __init__(self, mode: str, reply: bytes = b""):
        self.mode = mode
        self.reply = reply
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stop_flag = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.stop_flag:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            c.recv(65536)
            if self.mode == "silent":
                continue
            if self.mode == "reply":
                try:
                    c.sendall(self.reply)
                except OSError:
                    pass  # the client may hang up once it has seen enough
                c.close()
                continue
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n"
                      b"Content-Type: application/octet-stream\r\n\r\n" + b"x" * 10)
            if self.mode == "reset":
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                c.close()

    def close(self):
        self.stop_flag = True
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.mark.parametrize("mode,code", [("silent", "TIMEOUT"), ("stall", "TIMEOUT"),
                                       ("reset", "INTERRUPTED")])
def test_transport_faults(tool, mode, code):
    peer = FakePeer(mode)
    try:
        r = one(tool, f"http://127.0.0.1:{peer.port}", "--response-timeout", 1000,
                "--stall-timeout", 1000, "blob", "a/b", "sha256:" + "2" * 64)
        assert (r["ok"], r["code"]) == (False, code), r
    finally:
        peer.close()


def _http(status_line: str, headers: dict, body: bytes, chunked: bool = False) -> bytes:
    head = f"HTTP/1.1 {status_line}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    if chunked:
        head += "Transfer-Encoding: chunked\r\n\r\n"
        out = head.encode()
        for i in range(0, len(body), 65536):
            piece = body[i:i + 65536]
            out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        return out + b"0\r\n\r\n"
    head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    return head.encode() + body


@pytest.mark.parametrize("chunked", [False, True])
def test_manifest_over_the_cap_is_refused(tool, chunked):
    # 4 MiB is the manifest cap; announced by Content-Length or found while reading a chunked body.
    body = b"{" + b" " * (4 * MiB) + b"}"
    peer = FakePeer("reply", _http("200 OK", {"Content-Type": OCI_MANIFEST}, body, chunked))
    try:
        r = one(tool, f"http://127.0.0.1:{peer.port}", "manifest", "a/b", "v1")
        assert (r["ok"], r["code"]) == (False, "TOO_LARGE"), r
    finally:
        peer.close()


def test_manifest_digest_is_checked(tool):
    body = b'{"schemaVersion":2}'
    wrong = "sha256:" + "3" * 64
    peer = FakePeer("reply", _http("200 OK", {"Content-Type": OCI_MANIFEST,
                                              "Docker-Content-Digest": wrong}, body))
    try:
        r = one(tool, f"http://127.0.0.1:{peer.port}", "manifest", "a/b", "v1")
        assert (r["ok"], r["code"]) == (False, "DIGEST_MISMATCH"), r
        # Asked by digest: the body must hash to the reference.
        r = one(tool, f"http://127.0.0.1:{peer.port}", "manifest", "a/b", wrong)
        assert (r["ok"], r["code"]) == (False, "DIGEST_MISMATCH"), r
    finally:
        peer.close()


def test_rate_limit_is_toomanyrequests(tool):
    body = b'{"errors":[{"code":"TOOMANYREQUESTS","message":"pull rate limit"}]}'
    peer = FakePeer("reply", _http("429 Too Many Requests",
                                   {"Content-Type": "application/json"}, body))
    try:
        r = one(tool, f"http://127.0.0.1:{peer.port}", "blob", "a/b", "sha256:" + "4" * 64)
        assert (r["ok"], r["code"], r["status"]) == (False, "TOOMANYREQUESTS", 429), r
        assert "pull rate limit" in r["message"]
    finally:
        peer.close()


def test_blob_head_digest_other_than_asked_is_dropped(tool):
    asked = "sha256:" + "6" * 64
    for sent, kept in [("sha256:" + "7" * 64, ""), ("sha512:" + "7" * 128, ""), (asked, asked)]:
        peer = FakePeer("reply", _http("200 OK", {"Docker-Content-Digest": sent}, b""))
        try:
            r = one(tool, f"http://127.0.0.1:{peer.port}", "head-blob", "a/b", asked)
            assert r["ok"] and r["digest"] == kept, r
        finally:
            peer.close()
