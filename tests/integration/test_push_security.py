"""What a pushing client cannot make drayage do, with the real peers of test_push_api.py (Swift
s3api as the bucket, docker-registry on the same bucket and rootdirectory behind drayage).

- A monolithic upload (`POST ?digest=`) links a blob to the repository only when its body hashes
  to the digest, also when the blob is in the bucket already: knowing a digest of someone else's
  repository does not make its bytes readable under one's own, neither through drayage nor
  through the registry serving the same bucket.
- With both `mount=` and `digest=`, the mount (the part the front's access check looked at) is
  what the push code acts on.
- A monolithic upload's memory comes from `chunksize` and `multipart.concurrency`, whatever
  Content-Length the client declares; a length no S3 upload can hold is refused before any byte.

Run: DRAYAGE_BUILD_DIR=build /usr/bin/python3 -m pytest tests/integration/test_push_security.py
"""
import pathlib
import socket
import threading
import time

import pytest
import requests

from harness.swift import swift  # noqa: F401 - session fixture
from test_auth_pull import auth_config
from test_push_api import MiB, Stack, data, digest_of

RULES = [
    {"repositories": ["team/**"], "pull": ["alice"], "push": ["alice"]},
    {"repositories": ["bob/**"], "pull": ["bob"], "push": ["bob"]},
]
ALICE = ("alice", "pw")
BOB = ("bob", "bobpw")
CHUNKSIZE = 5 * MiB  # Stack's storage.s3.chunksize
CONCURRENCY = 4      # Stack's storage.s3.multipart.concurrency


@pytest.fixture(params=["auth", "open"])
def stack(request, swift, drayage_factory, tmp_path):  # noqa: F811
    """test_push_api's stack, without `auth` ("open") and with rules where bob may push only to
    bob/** and alice owns team/** ("auth"). stack.creds(who) is what to send as `who`."""
    extra = None
    if request.param == "auth":
        extra = {"auth": auth_config(tmp_path / "authcfg", RULES)}
    s = Stack(swift, drayage_factory, tmp_path, drayage_extra=extra, name="sec")
    s.creds = (lambda who: who) if request.param == "auth" else (lambda who: None)
    yield s
    s.stop()


def push_secret(stack, seed: int) -> bytes:
    """A blob in team/secret, pushed by alice; returns its bytes."""
    blob = data(200 * 1024, seed)
    r = requests.post(f"{stack.url}/v2/team/secret/blobs/uploads/?digest={digest_of(blob)}",
                      data=blob, auth=stack.creds(ALICE), timeout=60)
    assert r.status_code == 201, r.text
    stack.assert_stored("team/secret", blob)
    return blob


def assert_not_linked(stack, repo: str, digest: str):
    """No link in the bucket: the registry does not serve the blob under repo, nor, with auth,
    does drayage."""
    assert stack.get_object(stack.link_key(repo, digest)) is None
    st, _, body = stack.registry.get(f"/v2/{repo}/blobs/{digest}")
    assert st == 404, (st, body[:200])
    if stack.creds(BOB) is None:
        return  # without auth drayage serves any blob by digest: there is nothing to prove
    r = requests.get(f"{stack.url}/v2/{repo}/blobs/{digest}", auth=stack.creds(BOB), timeout=30)
    assert r.status_code == 404, (r.status_code, r.content[:200])


def test_monolithic_post_of_a_known_digest_needs_its_bytes(stack):
    secret = push_secret(stack, 21)
    d = digest_of(secret)
    url = f"{stack.url}/v2/bob/x/blobs/uploads/?digest={d}"
    refused = stack.metric("drayage_push_blobs_total", 'outcome="digest_invalid"')
    # No body, an empty body, and bytes that are not the blob: refused, nothing linked.
    for body in (None, b"", secret[:1000], secret + b"x"):
        r = requests.post(url, data=body, auth=stack.creds(BOB), timeout=60)
        assert r.status_code == 400, (body and len(body), r.status_code, r.text)
        assert r.json()["errors"][0]["code"] == "DIGEST_INVALID"
        assert_not_linked(stack, "bob/x", d)
    assert stack.metric("drayage_push_blobs_total", 'outcome="digest_invalid"') == refused + 4
    # With the bytes themselves the push is an ordinary one: linked, not stored again.
    mark = stack.swift.log_mark()
    r = requests.post(url, data=secret, auth=stack.creds(BOB), timeout=60)
    assert r.status_code == 201, r.text
    stack.assert_stored("bob/x", secret)
    writes = [q for q in stack.swift.s3_requests(mark) if q.method in ("PUT", "POST")]
    assert [q.path.split("?")[0] for q in writes] == [
        f"/{stack.swift.bucket}/{stack.link_key('bob/x', d)}"]
    st, _, body = stack.registry.get(f"/v2/bob/x/blobs/{d}")
    assert st == 200 and body == secret
    stack.assert_clean()


def start_upload_as(stack, repo: str, who) -> str:
    r = requests.post(f"{stack.url}/v2/{repo}/blobs/uploads/", auth=stack.creds(who), timeout=30)
    assert r.status_code == 202, r.text
    return r.headers["Location"]


def test_final_put_of_a_known_digest_needs_its_bytes(stack):
    """The chunked workflow: the blob already in the bucket does not make the PUT skip the hash."""
    secret = push_secret(stack, 22)
    d = digest_of(secret)
    for sent in (b"", secret[:-1]):
        loc = start_upload_as(stack, "bob/y", BOB)
        if sent:
            r = requests.patch(f"{stack.url}{loc}", data=sent, auth=stack.creds(BOB), timeout=60)
            assert r.status_code == 202, r.text
        r = requests.put(f"{stack.url}{loc}?digest={d}", auth=stack.creds(BOB), timeout=60)
        assert r.status_code == 400, r.text
        assert r.json()["errors"][0]["code"] == "DIGEST_INVALID"
        assert_not_linked(stack, "bob/y", d)
    stack.assert_clean()


def test_mount_is_acted_on_before_digest(stack):
    """mount= and digest= together: the push code mounts (what the front's check vetted); it does
    not take digest= as the blob to place."""
    mine = data(64 * 1024, 23)
    d = digest_of(mine)
    r = requests.post(f"{stack.url}/v2/bob/src/blobs/uploads/?digest={d}", data=mine,
                      auth=stack.creds(BOB), timeout=60)
    assert r.status_code == 201, r.text
    mounted = stack.metric("drayage_push_blobs_total", 'outcome="mounted"')
    r = requests.post(f"{stack.url}/v2/bob/dst/blobs/uploads/?digest={d}&mount={d}&from=bob/src",
                      auth=stack.creds(BOB), timeout=30)
    assert r.status_code == 201, r.text
    assert stack.metric("drayage_push_blobs_total", 'outcome="mounted"') == mounted + 1
    stack.assert_stored("bob/dst", mine)
    # A secret digest as digest=, beside a mount of bob's own blob: only bob's blob is linked.
    secret = push_secret(stack, 24)
    s = digest_of(secret)
    r = requests.post(f"{stack.url}/v2/bob/dst2/blobs/uploads/?mount={d}&from=bob/src&digest={s}",
                      auth=stack.creds(BOB), timeout=30)
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == d
    stack.assert_stored("bob/dst2", mine)
    assert_not_linked(stack, "bob/dst2", s)
    # The mount source holds no such blob: the monolithic upload's rule (the bytes) applies.
    r = requests.post(f"{stack.url}/v2/bob/dst3/blobs/uploads/?mount={s}&from=bob/src&digest={s}",
                      auth=stack.creds(BOB), timeout=30)
    assert r.status_code in (400, 404), r.text
    assert_not_linked(stack, "bob/dst3", s)


# ---- memory of a monolithic upload ----------------------------------------------------------

def proc_status_kib(pid: int, field: str) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def send_head(port: int, path: str, length: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall((f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
               "Content-Type: application/octet-stream\r\n\r\n").encode())
    return s


@pytest.mark.parametrize("stack", ["open"], indirect=True)
def test_declared_length_does_not_size_memory(stack):
    """50 TB declared, 300 MiB sent, then the connection cut: drayage's peak RSS stays within
    (concurrency + 1) x chunksize over what it used before, plus a margin for everything else."""
    pid = stack.drayage.proc.pid
    requests.get(f"{stack.url}/v2/", timeout=10)
    before = proc_status_kib(pid, "VmHWM") * 1024
    bytes_in = stack.metric("drayage_push_bytes_total")
    sent_target = 300 * MiB
    s = send_head(stack.drayage.port, f"/v2/big/blobs/uploads/?digest={digest_of(b'big')}",
                  50 * 10**12)
    chunk = data(MiB, 25)

    def feed():
        try:
            for _ in range(sent_target // MiB):
                s.sendall(chunk)
        except OSError:
            pass  # cut by the test
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    deadline = time.monotonic() + 240
    while stack.metric("drayage_push_bytes_total") < bytes_in + sent_target:
        assert time.monotonic() < deadline, "drayage stopped taking the body"
        time.sleep(0.2)
    peak = proc_status_kib(pid, "VmHWM") * 1024
    s.close()
    feeder.join(timeout=30)
    budget = (CONCURRENCY + 1) * CHUNKSIZE + 64 * MiB
    assert peak - before < budget, (peak - before) / MiB
    stack.assert_clean(timeout=30)
    assert stack.keys("docker/registry/v2/") == []


@pytest.mark.parametrize("stack", ["open"], indirect=True)
def test_declared_length_past_what_s3_can_hold_is_refused(stack):
    """60 TB do not fit in 10,000 parts of 5 GiB: refused at once, without reading the body."""
    s = send_head(stack.drayage.port, f"/v2/huge/blobs/uploads/?digest={digest_of(b'huge')}",
                  60 * 10**12)
    try:
        s.sendall(b"x" * 1000)
        status, body = read_response(s)
    finally:
        s.close()
    assert status == 413, body
    assert b"SIZE_INVALID" in body, body
    stack.assert_clean()


def read_response(s: socket.socket) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a Content-Length body, read within a generous deadline."""
    s.settimeout(60)
    buf = b""
    while b"\r\n\r\n" not in buf:
        piece = s.recv(65536)
        assert piece, f"connection closed without an answer: {buf!r}"
        buf += piece
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    length = next(int(v) for k, v in (ln.split(":", 1) for ln in lines[1:])
                  if k.strip().lower() == "content-length")
    while len(body) < length:
        piece = s.recv(65536)
        assert piece, "connection closed mid-body"
        body += piece
    return int(lines[0].split()[1]), body
