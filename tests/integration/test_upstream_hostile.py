"""drayage in front of a hostile upstream (harness/hostile_upstream.py): what a registry that
lies or never finishes can and cannot do to drayage and its clients.

- Bodies that never end (an endless error body, a manifest that trickles forever) and blobs that
  stop half-way end within the configured upstream.timeout / stall_timeout: the client gets an
  error or a cut connection, drayage closes the upstream connection, its memory stays flat.
- A token realm in another protocol (gopher://, with CR/LF in it) is never asked; a realm that
  failed is not kept, so once the registry names a working realm pulls work without a restart.
- A Docker-Content-Digest that does not match the manifest (any algorithm) is an error, and the
  manifest is not cached under it.

No assertion is on time: the deadlines are small (2 s) and the waits generous.
"""
import hashlib
import json
import select
import socket
import time

import pytest
import requests

from harness.hostile_upstream import STALL_SIZE, HostileUpstream
from harness.net import free_port, rss_kib
from harness.registry import OCI_MANIFEST
from harness.tokenserver import TokenServer

MiB = 1024 * 1024
BLOB = "sha256:" + "5" * 64
WAIT = 60  # seconds a client waits for what the 2 s deadlines must bring about


def wait_until(predicate, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def hostile(drayage_factory):
    up = HostileUpstream().start()
    d = drayage_factory({"upstream": {"url": up.url, "connect_timeout": "2s",
                                      "response_timeout": "2s", "stall_timeout": "2s",
                                      "timeout": "2s"}})
    yield up, d
    up.stop()


# --- bodies that never end ----------------------------------------------------------------------

@pytest.mark.parametrize("script", ["endless_404", "endless_401"])
@pytest.mark.parametrize("kind", ["manifest", "blob"])
def test_endless_error_body_is_cut(hostile, script, kind):
    up, d = hostile
    path = "/v2/a/b/manifests/v1" if kind == "manifest" else f"/v2/a/b/blobs/{BLOB}"
    up.script(path, script)
    rss_before = rss_kib(d.proc.pid)
    r = requests.get(d.url + path, timeout=WAIT)
    if script == "endless_404":
        assert r.status_code == 404, r.text
        assert r.json()["errors"][0]["code"] == ("MANIFEST_UNKNOWN" if kind == "manifest"
                                                 else "BLOB_UNKNOWN")
    else:  # a Basic challenge drayage has no credentials for
        assert r.status_code == 401, r.text
    # drayage read a bounded part of the body and hung up.
    assert wait_until(lambda: up.cut_by_peer >= 1)
    assert rss_kib(d.proc.pid) - rss_before < 32 * 1024


def test_trickling_manifest_hits_the_deadline(hostile):
    up, d = hostile
    up.script("/v2/a/b/manifests/v1", "trickle_manifest")
    r = requests.get(d.url + "/v2/a/b/manifests/v1", timeout=WAIT)
    assert r.status_code == 503, r.text
    assert r.json()["errors"][0]["code"] == "UNAVAILABLE"
    assert "upstream.timeout" in r.json()["errors"][0]["message"]
    assert wait_until(lambda: up.cut_by_peer >= 1)
    # The exchange cut short still counts (as the status of its head).
    assert d.metric("drayage_upstream_requests_total", 'op="manifest_get",status="200"') == 1


def test_blob_that_stalls_is_cut(hostile):
    up, d = hostile
    up.script(f"/v2/a/b/blobs/{BLOB}", "stall_blob")
    got = 0
    with requests.get(f"{d.url}/v2/a/b/blobs/{BLOB}", stream=True, timeout=WAIT) as r:
        assert r.status_code == 200
        assert int(r.headers["Content-Length"]) == STALL_SIZE
        try:
            for piece in r.iter_content(65536):
                got += len(piece)
        except requests.exceptions.RequestException:
            pass  # urllib3 2 raises on the short body; 1.26 returns what came
    assert got < STALL_SIZE  # the connection was cut: a short body, never taken for whole
    assert wait_until(lambda: up.cut_by_peer >= 1)


def test_endless_answer_to_a_forwarded_write_is_cut(hostile):
    """A manifest PUT goes through to the upstream (passthrough): its endless answer is streamed
    to the client until upstream.timeout, then both connections are closed."""
    up, d = hostile
    up.script("/v2/a/b/manifests/v1", "endless_404")
    deadline = time.monotonic() + WAIT
    with requests.put(d.url + "/v2/a/b/manifests/v1", data=b"{}", stream=True,
                      timeout=WAIT) as r:
        assert r.status_code == 404
        try:
            for _ in r.iter_content(1 << 20):
                assert time.monotonic() < deadline, "the endless answer was never cut"
        except requests.exceptions.RequestException:
            pass  # the cut, as urllib3 2 reports it
    assert wait_until(lambda: up.cut_by_peer >= 1)


# --- token realms -------------------------------------------------------------------------------

def pending_connection(listener: socket.socket) -> bool:
    """Whether anyone connected to `listener` (a connection waits in its backlog)."""
    readable, _, _ = select.select([listener], [], [], 0)
    return bool(readable)


@pytest.mark.parametrize("realm", [
    "gopher://127.0.0.1:{port}/_SET%20pwned%201%0D%0AQUIT%0D%0A",
    # A bare CR stays inside the header line curl hands over (it splits lines at LF).
    "http://127.0.0.1:{port}/token\rX-Injected: 1",
])
def test_realm_outside_http_is_refused_and_not_kept(hostile, tmp_path, realm):
    up, d = hostile
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    tokens = TokenServer(tmp_path / "tokens", anonymous={"a/*": ["pull"]},
                         service=up.service).start()
    try:
        body = b'{"schemaVersion":2,"mediaType":"%s","layers":[]}' % OCI_MANIFEST.encode()
        up.manifests["/v2/a/b/manifests/v1"] = ({"Content-Type": OCI_MANIFEST}, body)
        up.token_key = tokens.key.public_key()
        up.realm = realm.format(port=port)
        r = requests.get(d.url + "/v2/a/b/manifests/v1", timeout=WAIT)
        assert r.status_code == 503, r.text
        assert "token realm" in r.json()["errors"][0]["message"]
        assert not pending_connection(listener)
        assert tokens.token_requests() == []

        # The registry now names a working realm: the next pull learns it, no restart.
        up.realm = tokens.realm
        r = requests.get(d.url + "/v2/a/b/manifests/v1", timeout=WAIT)
        assert r.status_code == 200, r.text
        assert r.content == body
        assert len(tokens.token_requests(status=200)) == 1
        assert not pending_connection(listener)
    finally:
        tokens.stop()
        listener.close()


def test_failed_realm_is_not_kept(hostile, tmp_path):
    """An http realm where nothing answers: the pull fails (503), and once the registry names a
    working realm the next pull learns it instead of asking the dead one again."""
    up, d = hostile
    tokens = TokenServer(tmp_path / "tokens", anonymous={"a/*": ["pull"]},
                         service=up.service).start()
    try:
        body = b'{"schemaVersion":2,"layers":[]}'
        up.manifests["/v2/a/b/manifests/v1"] = ({"Content-Type": OCI_MANIFEST}, body)
        up.token_key = tokens.key.public_key()
        up.realm = f"http://127.0.0.1:{free_port()}/token"
        r = requests.get(d.url + "/v2/a/b/manifests/v1", timeout=WAIT)
        assert r.status_code == 503, r.text
        up.realm = tokens.realm
        r = requests.get(d.url + "/v2/a/b/manifests/v1", timeout=WAIT)
        assert r.status_code == 200, r.text
        assert r.content == body
    finally:
        tokens.stop()


def test_redirect_to_another_protocol_is_not_followed(hostile):
    """A blob GET answered with a 307 to ftp:// (curl follows ftp redirects by default): nothing
    connects to the ftp "server", and the client gets an error."""
    up, d = hostile
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]

    def redirect(conn, req):
        conn.sendall(f"HTTP/1.1 307 Temporary Redirect\r\nLocation: ftp://127.0.0.1:{port}/x\r\n"
                     "Content-Length: 0\r\nConnection: close\r\n\r\n".encode())

    up.script(f"/v2/a/b/blobs/{BLOB}", redirect)
    try:
        r = requests.get(f"{d.url}/v2/a/b/blobs/{BLOB}", timeout=WAIT)
        assert r.status_code == 503, r.text
        assert not pending_connection(listener)
    finally:
        listener.close()


# --- Docker-Content-Digest ----------------------------------------------------------------------

def sha512(b: bytes) -> str:
    return "sha512:" + hashlib.sha512(b).hexdigest()


def test_manifest_digest_of_any_algorithm_is_checked(hostile):
    up, d = hostile
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode()
    lie = sha512(b"something else")
    up.manifests["/v2/a/b/manifests/lying"] = ({"Content-Type": OCI_MANIFEST,
                                                "Docker-Content-Digest": lie}, body)
    r = requests.get(d.url + "/v2/a/b/manifests/lying", timeout=WAIT)
    assert r.status_code == 503, r.text
    assert "DIGEST_MISMATCH" in r.json()["errors"][0]["message"]
    # Not cached under the lie: asking for it goes upstream, which does not know it.
    r = requests.get(f"{d.url}/v2/a/b/manifests/{lie}", timeout=WAIT)
    assert r.status_code == 404, r.text
    assert f"/v2/a/b/manifests/{lie}" in up.paths("GET")

    # By digest: the body must hash to the sha512 asked for; never cached otherwise.
    asked = sha512(b"not this body")
    up.manifests[f"/v2/a/b/manifests/{asked}"] = ({"Content-Type": OCI_MANIFEST}, body)
    for _ in range(2):
        r = requests.get(f"{d.url}/v2/a/b/manifests/{asked}", timeout=WAIT)
        assert r.status_code == 503, r.text
    assert up.paths("GET").count(f"/v2/a/b/manifests/{asked}") == 2

    # A sha512 that is true is passed on, and the manifest served by it.
    true = sha512(body)
    for path in ("/v2/a/b/manifests/honest", f"/v2/a/b/manifests/{true}"):
        up.manifests[path] = ({"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": true}, body)
        r = requests.get(d.url + path, timeout=WAIT)
        assert r.status_code == 200 and r.content == body
        assert r.headers["Docker-Content-Digest"] == true


def test_malformed_manifest_digest_is_dropped(hostile):
    up, d = hostile
    body = b'{"schemaVersion":2,"layers":[]}'
    up.manifests["/v2/a/b/manifests/odd"] = ({"Content-Type": OCI_MANIFEST,
                                              "Docker-Content-Digest": "md5:abc<script>"}, body)
    # A HEAD has no body to hash: the claim is dropped, not passed on.
    r = requests.head(d.url + "/v2/a/b/manifests/odd", timeout=WAIT)
    assert r.status_code == 200
    assert "md5" not in r.headers.get("Docker-Content-Digest", "")
    r = requests.get(d.url + "/v2/a/b/manifests/odd", timeout=WAIT)
    assert r.status_code == 200, r.text
    assert r.headers["Docker-Content-Digest"] == "sha256:" + hashlib.sha256(body).hexdigest()
