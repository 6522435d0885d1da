"""Hostile and broken origins (issue 19, item 1): drayage pulling from a registry, a bucket or a
token endpoint that lies about lengths, ends early, stalls, loops, resets, or sends what no
registry should (harness/hostile_upstream.py plays them all).

Every case runs 4 clients at once; where a blob is involved they are joined on the same digest
(each has its response head before the origin goes wrong). What every case holds to, unless its
docstring says otherwise:
- bounded time: every client has its answer within WAIT (a deadline that bounds a hang, not a
  measure of speed);
- bounded memory: drayage's peak resident set (VmHWM) grows by less than GROWTH_KIB;
- each client gets a Registry API error or a cut connection, never a complete body of wrong
  bytes;
- nothing unverified is cached: `drayage cache ls` does not list the blob, and once the origin is
  fixed the next request goes to it and gets the right bytes;
- drayage still serves other requests afterwards.
The timeouts are small (1-2 s) so the suite stays quick; the waits for them are generous.
"""
import concurrent.futures
import hashlib
import json
import random
import subprocess
import threading

import pytest
import requests

from harness.hostile_upstream import HostileUpstream
from harness.net import peak_rss_kib, wait_until
from harness.registry import OCI_MANIFEST
from harness.tokenserver import TokenServer

KiB = 1024
MiB = 1024 * KiB
WAIT = 60  # seconds: how long a client waits for what the 1-2 s timeouts must bring about
GROWTH_KIB = 64 * 1024  # VmHWM growth allowed over one case
CLIENTS = 4
BLOB = random.Random(19).randbytes(MiB)
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
BLOB_PATH = f"/v2/a/b/blobs/{DIGEST}"
HOLD = 64 * KiB  # bytes an origin sends before it waits for the clients to join


def sha256(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


class Outcome:
    """What one client got: status (None: no response head), body, whether the body was
    complete as framed, and the Registry API error code when it is an error body."""

    def __init__(self, status, body: bytes, complete: bool):
        self.status, self.body, self.complete = status, body, complete
        self.code = None
        if status is not None and status >= 400 and complete:
            self.code = json.loads(body)["errors"][0]["code"]

    def __repr__(self):
        return (f"<{self.status} {len(self.body)} bytes complete={self.complete} {self.code} "
                f"{self.body[:300]!r}>")


def pull(url: str, heads=None, headers=None) -> Outcome:
    status, body = None, b""
    try:
        with requests.get(url, stream=True, timeout=WAIT, headers=headers) as r:
            status = r.status_code
            if heads is not None:
                heads.release()
            for piece in r.raw.stream(MiB, decode_content=False):
                body += piece
            length = r.headers.get("Content-Length")
            return Outcome(status, body, length is None or int(length) == len(body))
    except (requests.exceptions.RequestException, ConnectionError,
            requests.packages.urllib3.exceptions.HTTPError):
        return Outcome(status, body, False)


def pull_together(url: str, up=None, **kw) -> list:
    """CLIENTS pulls of `url` at once. With `up`, its gate is opened once every client has its
    response head, so all of them are joined to the transfer before it goes wrong."""
    heads = threading.Semaphore(0)
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(pull, url, heads, **kw) for _ in range(CLIENTS)]
        if up is not None:
            for _ in range(CLIENTS):
                assert heads.acquire(timeout=WAIT), "a client got no response head"
            up.gate.set()
        return [f.result(timeout=WAIT) for f in futures]


def pull_at_once(d, url: str, up) -> list:
    """CLIENTS pulls of `url` while the origin holds its answer (gate closed): the gate opens
    once drayage holds all their connections, so they ask while one upstream request runs."""
    up.gate.clear()
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(pull, url) for _ in range(CLIENTS)]
        wait_until(lambda: d.metric("drayage_http_open_connections") >= CLIENTS + 1,
                   "all clients connected", WAIT)
        up.gate.set()
        return [f.result(timeout=WAIT) for f in futures]


def no_wrong_body(outcomes, right: bytes | None = None):
    """Each client: a Registry API error, a cut, or (with `right`) exactly the right bytes."""
    for o in outcomes:
        if o.complete and o.status == 200:
            assert right is not None and o.body == right, o
        elif o.complete:
            assert o.code is not None, o


def cached_blobs(d, build_dir) -> set:
    out = subprocess.run([str(build_dir / "src" / "drayage"), "cache", "ls", "--config",
                          str(d.config_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return {line.split()[0] for line in out.stdout.splitlines()[1:] if line.strip()}


class Mirror:
    """drayage with small upstream timeouts in front of a HostileUpstream."""

    def __init__(self, factory, up, **extra):
        self.up = up
        config = {"upstream": {"url": up.url, "connect_timeout": "2s",
                               "response_timeout": "2s", "stall_timeout": "1s",
                               "timeout": "2s"}}
        config.update(extra)
        self.d = factory(config)
        assert requests.get(self.d.url + "/v2/", timeout=WAIT).status_code == 200
        self.peak_before = peak_rss_kib(self.d.proc.pid)

    def still_well(self):
        """Memory bounded, process up, other requests served."""
        grown = peak_rss_kib(self.d.proc.pid) - self.peak_before
        assert grown < GROWTH_KIB, f"VmHWM grew by {grown} KiB"
        assert self.d.proc.poll() is None
        assert requests.get(self.d.url + "/v2/", timeout=WAIT).status_code == 200


@pytest.fixture
def mirror(drayage_factory):
    up = HostileUpstream().start()
    yield Mirror(drayage_factory, up)
    up.gate.set()
    up.stop()


def fixed_blob_is_fetched(m, build_dir, path=BLOB_PATH):
    """Nothing of the bad transfer was kept: the cache does not list it, and the next request,
    with the origin fixed, goes to the origin and gets the right bytes."""
    assert DIGEST not in cached_blobs(m.d, build_dir)
    before = len(m.up.paths("GET"))
    m.up.script(path, m.up.answer(BLOB))
    o = pull(m.d.url + BLOB_PATH)
    assert (o.status, o.complete, o.body == BLOB) == (200, True, True), o
    assert len(m.up.paths("GET")) > before
    assert DIGEST in cached_blobs(m.d, build_dir)


# --- blob bodies that lie about their length, end early or stall --------------------------------

def corrupt(b: bytes) -> bytes:
    out = bytearray(b)
    out[len(out) // 2] ^= 1
    return bytes(out)


BAD_BLOBS = {
    # Content-Length promises more than is sent, then FIN.
    "length_larger": dict(body=BLOB, length=len(BLOB) + 4096),
    # Content-Length promises less: the bytes it frames are a short, wrong blob.
    "length_smaller": dict(body=BLOB, length=len(BLOB) - 4096),
    # Chunked, closed before the last chunk.
    "chunked_ends_early": dict(body=BLOB, chunked=True, upto=len(BLOB) // 2),
    # Stops sending after half, connection kept open: upstream.stall_timeout ends it.
    "stalls": dict(body=BLOB, upto=len(BLOB) // 2, then="stall"),
    # The right length, one bit wrong.
    "wrong_bytes": dict(body=corrupt(BLOB)),
}


@pytest.mark.parametrize("case", BAD_BLOBS)
def test_blob_body_that_goes_wrong_cuts_every_joined_client(mirror, build_dir, case):
    """A 200 whose body is longer or shorter than its Content-Length, a chunked body that ends
    early, a body that stalls, a body of the wrong bytes: the four joined clients each get the
    200 head and then a cut connection (the last byte is held back until the digest checks out),
    the fill is dropped, and the next request fetches the blob anew."""
    m = mirror
    m.up.gate.clear()
    m.up.script(BLOB_PATH, m.up.answer(hold_at=HOLD, **BAD_BLOBS[case]))
    outcomes = pull_together(m.d.url + BLOB_PATH, m.up)
    assert all(o.status == 200 and not o.complete for o in outcomes), outcomes
    assert m.up.paths("GET").count(BLOB_PATH) == 1  # one upstream transfer for all four
    if case == "stalls":
        wait_until(lambda: m.up.cut_by_peer >= 1, "drayage hangs up", WAIT)
    m.still_well()
    fixed_blob_is_fetched(m, build_dir)


def test_bucket_answering_a_resume_with_200_instead_of_206(drayage_factory, build_dir):
    """The bucket (storage.s3) breaks a blob GET half-way; drayage resumes it with
    `Range: bytes=<next>-` and the bucket answers 200 with the whole object. Appending that would
    repeat the first half: the read fails instead (ResumeFailed), the joined clients are cut,
    nothing is cached, and once the bucket behaves the blob is served."""
    up = HostileUpstream().start()
    try:
        m = Mirror(drayage_factory, up, storage={"s3": {
            "accesskey": "k", "secretkey": "s", "region": "us-east-1", "regionendpoint": up.url,
            "bucket": "bkt", "secure": False, "rootdirectory": "/r",
            "retry": {"base_delay": "10ms", "max_delay": "50ms"}}})
        hexd = DIGEST.split(":", 1)[1]
        key = f"/bkt/r/docker/registry/v2/blobs/sha256/{hexd[:2]}/{hexd}/data"
        etag = {"ETag": '"blob-etag"'}
        # The repository holds the blob: its _layers link is in the bucket (the proof's HEAD).
        up.script(f"/bkt/r/docker/registry/v2/repositories/a/b/_layers/sha256/{hexd}/link",
                  up.answer(DIGEST.encode()))
        up.gate.clear()
        up.script(key, [up.answer(BLOB, headers=etag, upto=len(BLOB) // 2, hold_at=HOLD),
                        up.answer(BLOB, headers=etag)])
        outcomes = pull_together(m.d.url + BLOB_PATH, up)
        assert all(o.status == 200 and not o.complete for o in outcomes), outcomes
        ranged = [r for r in up.requests if r["path"] == key and "range" in r["headers"]]
        assert ranged and ranged[0]["headers"]["range"] == f"bytes={len(BLOB) // 2}-"
        m.still_well()
        assert DIGEST not in cached_blobs(m.d, build_dir)
        o = pull(m.d.url + BLOB_PATH)
        assert (o.status, o.complete, o.body == BLOB) == (200, True, True), o
    finally:
        up.gate.set()
        up.stop()


# --- redirects ------------------------------------------------------------------------------------

def test_redirect_loop_is_an_error(mirror, build_dir):
    """A blob GET redirected to itself, for ever: curl stops after a few hops and every client
    gets 503 UNAVAILABLE; the loop is not followed further."""
    m = mirror
    loop = m.up.answer(b"", status=307, headers={"Location": m.up.url + BLOB_PATH})
    m.up.script(BLOB_PATH, [m.up.answer(b"", status=307, hold_head=True,
                                        headers={"Location": m.up.url + BLOB_PATH}), loop])
    outcomes = pull_at_once(m.d, m.d.url + BLOB_PATH, m.up)
    assert {(o.status, o.code) for o in outcomes} == {(503, "UNAVAILABLE")}, outcomes
    assert len(m.up.paths("GET")) <= CLIENTS * 10
    m.still_well()
    fixed_blob_is_fetched(m, build_dir)


def test_redirect_to_a_host_that_resets(mirror, build_dir):
    """A blob GET redirected to a host that resets the connection: 503 UNAVAILABLE to each
    client, nothing cached."""
    m = mirror
    other = HostileUpstream().start()
    try:
        other.script("/blob", "reset")
        m.up.script(BLOB_PATH, m.up.answer(b"", status=307, hold_head=True,
                                           headers={"Location": other.url + "/blob"}))
        outcomes = pull_at_once(m.d, m.d.url + BLOB_PATH, m.up)
        assert {(o.status, o.code) for o in outcomes} == {(503, "UNAVAILABLE")}, outcomes
        assert other.paths("GET")
        m.still_well()
        fixed_blob_is_fetched(m, build_dir)
    finally:
        other.stop()


# --- manifests ------------------------------------------------------------------------------------

MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode()


def padding(total: int):
    """A manifest-looking JSON document of `total` bytes, made piece by piece."""
    yield b'{"schemaVersion":2,"x":"'
    left = total - len(b'{"schemaVersion":2,"x":"') - 2
    while left > 0:
        n = min(left, MiB)
        yield b"a" * n
        left -= n
    yield b'"}'


def fixed_manifest_is_fetched(m, ref: str):
    before = m.up.paths("GET").count(f"/v2/a/b/manifests/{ref}")
    m.up.script(f"/v2/a/b/manifests/{ref}", m.up.answer(MANIFEST,
                                                        headers={"Content-Type": OCI_MANIFEST}))
    r = requests.get(f"{m.d.url}/v2/a/b/manifests/{ref}", timeout=WAIT)
    assert r.status_code == 200 and r.content == MANIFEST
    assert m.up.paths("GET").count(f"/v2/a/b/manifests/{ref}") == before + 1


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_manifest_of_100_mib_is_refused(mirror, framing):
    """A manifest of 100 MiB (announced, or sent chunked without a length): refused past the
    4 MiB manifest cap without being held whole (503 UNAVAILABLE naming TOO_LARGE to each
    client); nothing cached."""
    m = mirror
    size = 100 * MiB
    m.up.script("/v2/a/b/manifests/big", m.up.answer(
        padding(size), hold_head=True, headers={"Content-Type": OCI_MANIFEST},
        length=size if framing == "length" else None))
    outcomes = pull_at_once(m.d, m.d.url + "/v2/a/b/manifests/big", m.up)
    assert {(o.status, o.code) for o in outcomes} == {(503, "UNAVAILABLE")}, outcomes
    assert all(b"TOO_LARGE" in o.body for o in outcomes)
    m.still_well()
    fixed_manifest_is_fetched(m, "big")


@pytest.mark.parametrize("kind", ["nested_10000_deep", "not_json"])
def test_manifest_drayage_does_not_parse_is_passed_on_verified(mirror, kind):
    """A manifest nested 10,000 levels deep, or one that is not JSON at all: drayage does not
    parse manifests (the client judges them), so each is passed on exactly as the registry holds
    it, its digest checked, at no more cost than its size. Here the outcome is the right bytes,
    not an error: they are what the registry holds under that digest."""
    m = mirror
    body = (b'{"schemaVersion":2,"x":' + b"[" * 10000 + b"]" * 10000 + b"}"
            if kind == "nested_10000_deep" else b"\x00\xff<html>not a manifest</html>")
    m.up.script("/v2/a/b/manifests/odd", m.up.answer(
        body, hold_head=True, headers={"Content-Type": OCI_MANIFEST,
                                       "Docker-Content-Digest": sha256(body)}))
    outcomes = pull_at_once(m.d, m.d.url + "/v2/a/b/manifests/odd", m.up)
    assert all(o.status == 200 and o.complete for o in outcomes), outcomes
    no_wrong_body(outcomes, right=body)
    r = requests.get(f"{m.d.url}/v2/a/b/manifests/{sha256(body)}", timeout=WAIT)
    assert r.status_code == 200 and r.content == body
    m.still_well()


def test_manifest_whose_digest_is_not_the_one_asked_for(mirror):
    """GET /manifests/<digest> answered with a body of another digest: 503 naming
    DIGEST_MISMATCH to each client, not cached under either digest; once the registry sends the
    right body it is served."""
    m = mirror
    other = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "x": 1}).encode()
    asked = sha256(MANIFEST)
    m.up.script(f"/v2/a/b/manifests/{asked}", m.up.answer(
        other, hold_head=True, headers={"Content-Type": OCI_MANIFEST,
                                        "Docker-Content-Digest": asked}))
    outcomes = pull_at_once(m.d, f"{m.d.url}/v2/a/b/manifests/{asked}", m.up)
    assert {(o.status, o.code) for o in outcomes} == {(503, "UNAVAILABLE")}, outcomes
    assert all(b"DIGEST_MISMATCH" in o.body for o in outcomes)
    r = requests.get(f"{m.d.url}/v2/a/b/manifests/{sha256(other)}", timeout=WAIT)
    assert r.status_code == 404  # not cached under its own digest either: the fake has none
    m.still_well()
    fixed_manifest_is_fetched(m, asked)


# --- tag lists ------------------------------------------------------------------------------------

def ten_million_tags():
    """{"name":"a/b","tags":["t0000000",...]} with 10 million tags, made as it is sent."""
    yield b'{"name":"a/b","tags":['
    n, step = 10_000_000, 20_000
    for i in range(0, n, step):
        yield b",".join(b'"t%07d"' % j for j in range(i, min(n, i + step))) + \
            (b"," if i + step < n else b"")
    yield b"]}"


def test_tag_list_of_ten_million_entries(mirror):
    """A tag list of 10 million entries (about 110 MB, streamed by the fake): drayage stops
    reading at its listing limits and answers 502 UNKNOWN to each client; memory stays bounded;
    the fake sees drayage hang up. A sane list afterwards is served."""
    m = mirror
    path = "/v2/a/b/tags/list"
    m.up.script(path, m.up.answer(ten_million_tags(), hold_head=True,
                                  headers={"Content-Type": "application/json"}))
    outcomes = pull_at_once(m.d, m.d.url + path, m.up)
    assert {(o.status, o.code) for o in outcomes} == {(502, "UNKNOWN")}, outcomes
    wait_until(lambda: m.up.cut_by_peer >= 1, "drayage hangs up on the endless list", WAIT)
    m.still_well()
    sane = b'{"name":"a/b","tags":["v1","v2"]}'
    m.up.script(path, m.up.answer(sane, headers={"Content-Type": "application/json"}))
    r = requests.get(m.d.url + path, timeout=WAIT)
    assert r.status_code == 200 and r.json()["tags"] == ["v1", "v2"]


# --- token endpoints and challenges ---------------------------------------------------------------

@pytest.fixture
def tokens(tmp_path, mirror):
    t = TokenServer(tmp_path / "tokens", anonymous={"a/*": ["pull"]},
                    service=mirror.up.service).start()
    mirror.up.manifests["/v2/a/b/manifests/v1"] = ({"Content-Type": OCI_MANIFEST}, MANIFEST)
    mirror.up.token_key = t.key.public_key()
    yield t
    t.release()
    t.stop()


def pulls_work_with(m, tokens):
    """With a token endpoint that behaves (learnt from the next challenge, no restart), the
    manifest is served."""
    m.up.realm = tokens.realm
    tokens.expires_in = 300
    r = requests.get(m.d.url + "/v2/a/b/manifests/v1", timeout=WAIT)
    assert r.status_code == 200 and r.content == MANIFEST, r.text


def test_token_endpoint_that_answers_slowly(mirror, tokens):
    """The token endpoint holds every request: each client gets 503 UNAVAILABLE naming the
    TIMEOUT once upstream.stall_timeout (or upstream.timeout) passes; the token fetch is shared,
    not one per client."""
    m = mirror
    m.up.realm = tokens.realm
    tokens.hold()
    outcomes = pull_together(m.d.url + "/v2/a/b/manifests/v1")
    assert {(o.status, o.code) for o in outcomes} == {(503, "UNAVAILABLE")}, outcomes
    assert all(b"TIMEOUT" in o.body for o in outcomes)
    assert tokens.in_flight() <= 1
    tokens.release()
    m.still_well()
    pulls_work_with(m, tokens)


def test_token_endpoint_that_answers_garbage(mirror, tokens):
    """The token endpoint answers 200 with an HTML page: an upstream fault, not the client's, so
    each client gets 503 UNAVAILABLE (a retry, or another mirror, can help); the realm is not
    kept, and the next challenge is learnt anew."""
    m = mirror
    m.up.realm = m.up.url + "/token"
    m.up.script("/token", m.up.answer(b"<html>Sign in to the hotel wifi</html>",
                                      headers={"Content-Type": "text/html"}))
    outcomes = pull_together(m.d.url + "/v2/a/b/manifests/v1")
    assert {(o.status, o.code) for o in outcomes} == {(503, "UNAVAILABLE")}, outcomes
    m.still_well()
    pulls_work_with(m, tokens)


def test_token_that_expires_at_once(mirror, tokens):
    """Tokens that have expired when they arrive (exp = issued_at): each request is refused
    again after one fresh token; the client gets a Registry API error (401 UNAUTHORIZED), and
    drayage does not loop fetching tokens."""
    m = mirror
    m.up.realm = tokens.realm
    tokens.expires_in = 0
    outcomes = pull_together(m.d.url + "/v2/a/b/manifests/v1")
    assert {(o.status, o.code) for o in outcomes} == {(401, "UNAUTHORIZED")}, outcomes
    assert len(tokens.token_requests()) <= 2 * CLIENTS
    m.still_well()
    pulls_work_with(m, tokens)


ODD_CHALLENGES = {  # {realm}: a token endpoint on the fake, which must never be asked
    "unterminated_quote": 'Bearer service="x",realm="{realm}',
    "no_parameters": "Bearer",
    "empty_realm": 'Bearer realm="",service="hostile"',
    "junk": '@@@ ,,, ==="\\',
    "huge_realm": 'Bearer realm="{realm}' + "a" * (1024 * KiB) + '"',
}


@pytest.mark.parametrize("case", ODD_CHALLENGES)
def test_malformed_or_enormous_challenge(mirror, tokens, case):
    """A 401 whose WWW-Authenticate is malformed, or 1 MiB long: no token endpoint is asked
    with it, each client gets a Registry API error (401 or 503) in bounded time and memory,
    and a well-formed challenge afterwards is learnt without a restart."""
    m = mirror
    path = "/v2/a/b/manifests/v1"
    m.up.script(path, m.up.answer(
        b'{"errors":[{"code":"UNAUTHORIZED","message":"no"}]}', status=401,
        headers={"WWW-Authenticate": ODD_CHALLENGES[case].replace("{realm}", m.up.url + "/t"),
                 "Content-Type": "application/json"}))
    outcomes = pull_together(m.d.url + path)
    assert all(o.complete and o.status in (401, 503) and o.code for o in outcomes), outcomes
    assert not [p for p in m.up.paths() if p.startswith("/t")]
    assert tokens.token_requests() == []
    m.still_well()
    del m.up.scripts[path]
    pulls_work_with(m, tokens)


def test_many_challenge_headers(mirror, tokens):
    """A 401 with 20,000 WWW-Authenticate fields (about 1 MB of head): each client gets a
    Registry API error, memory stays bounded, nothing is asked of the realms named."""
    m = mirror
    path = "/v2/a/b/manifests/v1"

    def answer(conn, req):
        field = b'WWW-Authenticate: Bearer realm="%s/t",service="s"\r\n' % m.up.url.encode()
        try:
            conn.sendall(b"HTTP/1.1 401 X\r\n" + field * 20000 +
                         b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        except OSError:
            pass

    m.up.script(path, answer)
    outcomes = pull_together(m.d.url + path)
    assert all(o.complete and o.status in (401, 503) and o.code for o in outcomes), outcomes
    assert not [p for p in m.up.paths() if p.startswith("/t")]
    m.still_well()
    del m.up.scripts[path]
    pulls_work_with(m, tokens)

