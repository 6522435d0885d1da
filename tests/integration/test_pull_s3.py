"""Pull path with the S3 bucket as a source: drayage in front of a docker-registry whose s3 driver
stores in Swift s3api, reading blobs straight from the bucket in the Distribution layout; a blob
altered in the bucket is never served as a complete body nor cached; write-through of upstream blobs
into the bucket; an upstream registry with token auth.
"""
import hashlib
import time
import uuid

import pytest
import requests

from harness.clients import dir_blobs, skopeo_pull
from harness.registry import ALL_MANIFESTS, KiB, MiB, Registry, s3_storage
from harness.swift import swift  # noqa: F401 (session fixture)
from harness.tokenserver import TokenServer


def drayage_s3_block(swift, root: str, **extra) -> dict:  # noqa: F811
    block = {
        "accesskey": swift.access_key, "secretkey": swift.secret_key, "region": swift.region,
        "regionendpoint": swift.endpoint, "bucket": swift.bucket, "secure": False,
        "chunksize": "5MiB", "rootdirectory": root,
    }
    block.update(extra)
    return block


def blob_key(root: str, digest: str) -> str:
    hexd = digest.split(":", 1)[1]
    return f"{root.strip('/')}/docker/registry/v2/blobs/sha256/{hexd[:2]}/{hexd}/data"


def link_key(root: str, repo: str, digest: str) -> str:
    """The repository's layer link, as the registry writes it: what proves to drayage that `repo`
    holds `digest` when there is no upstream to ask."""
    algo, hexd = digest.split(":", 1)
    return f"{root.strip('/')}/docker/registry/v2/repositories/{repo}/_layers/{algo}/{hexd}/link"


def fetch(url: str, headers: dict | None = None) -> tuple[int, int, str, bool]:
    """(status, bytes received, sha256, completed): completed is False when the transfer was cut."""
    h = hashlib.sha256()
    n = 0
    status = 0
    try:
        with requests.get(url, headers=headers, stream=True, timeout=60) as r:
            status = r.status_code
            for chunk in r.raw.stream(1 << 20, decode_content=False):
                h.update(chunk)
                n += len(chunk)
            expected = int(r.headers.get("Content-Length", -1))
            return r.status_code, n, "sha256:" + h.hexdigest(), n == expected
    except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError,
            Exception) as e:  # noqa: BLE001 - urllib3 raises ProtocolError on a cut body
        if "IncompleteRead" in repr(e) or "Connection" in repr(e) or "ProtocolError" in repr(e):
            return status, n, "sha256:" + h.hexdigest(), False
        raise


def test_blobs_come_straight_from_the_bucket(swift, tmp_path, drayage_factory):  # noqa: F811
    root = f"/reg-{uuid.uuid4().hex[:8]}"
    reg = Registry(tmp_path / "reg", s3=s3_storage(swift, root),
                   extra={"storage": {"redirect": {"disable": True}}}).start()
    try:
        image = reg.push_image("s3/app", "v1", [KiB, 6 * MiB + 3], seed=11)
        d = drayage_factory({"upstream": {"url": reg.url},
                             "storage": {"s3": drayage_s3_block(swift, root)}})
        mark = len(reg.blob_gets())
        dest = tmp_path / "pull"
        r = skopeo_pull(tmp_path / "sk", f"127.0.0.1:{d.port}", "s3/app:v1", dest)
        assert r.returncode == 0, r.stderr + d.log()[-3000:]
        blobs = dir_blobs(dest)
        for layer in image.layers:
            assert hashlib.sha256(blobs[layer.digest].read_bytes()).hexdigest() == \
                layer.digest.split(":")[1]
        reg.sync()
        assert len(reg.blob_gets()) == mark, "the registry served blobs drayage should read from S3"
        gets = [a for a in d.access("/blobs/") if a["method"] == "GET"]
        assert sorted(a["path"].rsplit("/", 1)[1] for a in gets) == \
            sorted([image.config.digest] + [layer.digest for layer in image.layers])
        assert [a["outcome"] for a in gets] == ["miss:s3"] * len(gets)
    finally:
        reg.stop()


def test_altered_blob_in_bucket_is_never_served_whole_nor_cached(swift, tmp_path,  # noqa: F811
                                                                  drayage_factory):
    root = f"/alt-{uuid.uuid4().hex[:8]}"
    size = 3 * MiB + 5
    good = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    digest = "sha256:" + hashlib.sha256(good).hexdigest()
    bad = bytearray(good)
    bad[size // 2] ^= 0xFF  # one flipped byte, same size
    s3 = swift.client()
    s3.put_object(Bucket=swift.bucket, Key=blob_key(root, digest), Body=bytes(bad))
    s3.put_object(Bucket=swift.bucket, Key=link_key(root, "alt/app", digest), Body=digest.encode())
    d = drayage_factory({"storage": {"s3": drayage_s3_block(swift, root)}})
    url = f"{d.url}/v2/alt/app/blobs/{digest}"
    for attempt in range(3):
        status, n, got, completed = fetch(url)
        assert not (status == 200 and completed and got == digest)
        assert not (status == 200 and completed), f"attempt {attempt}: a corrupt blob completed"
    # Ranges never hand out the bytes as a whole either; and nothing was cached.
    assert d.metric("drayage_registry_responses_total", 'outcome="hit"') == 0
    # With the right bytes in place, the next request fills and serves them.
    s3.put_object(Bucket=swift.bucket, Key=blob_key(root, digest), Body=good)
    status, n, got, completed = fetch(url)
    assert (status, n, got, completed) == (200, size, digest, True)


def test_write_through_shares_upstream_blobs_via_the_bucket(swift, tmp_path,  # noqa: F811
                                                            drayage_factory):
    root = f"/wt-{uuid.uuid4().hex[:8]}"
    reg = Registry(tmp_path / "up").start()
    try:
        image = reg.push_image("wt/app", "v1", [KiB, 12 * MiB + 7], seed=12)
        a = drayage_factory({"upstream": {"url": reg.url},
                             "storage": {"s3": drayage_s3_block(swift, root, writethrough=True)}},
                            name="node-a")
        for layer in image.layers:
            status, n, got, completed = fetch(f"{a.url}/v2/wt/app/blobs/{layer.digest}")
            assert (status, got, completed) == (200, layer.digest, True)
        s3 = swift.client()
        deadline = time.time() + 60
        for layer in image.layers:
            while True:
                try:
                    obj = s3.get_object(Bucket=swift.bucket, Key=blob_key(root, layer.digest))
                    break
                except s3.exceptions.NoSuchKey:
                    assert time.time() < deadline, "write-through did not land in the bucket"
                    time.sleep(0.2)
            body = obj["Body"].read()
            assert "sha256:" + hashlib.sha256(body).hexdigest() == layer.digest
        assert not s3.list_multipart_uploads(Bucket=swift.bucket,
                                             Prefix=root.strip("/")).get("Uploads")
    finally:
        reg.stop()
    # A second node with no upstream at all serves the blobs from the shared bucket, proven by
    # the repository's layer links there (which the registry wrote when the image was pushed to
    # a registry on this bucket; write-through copies only the data).
    for layer in image.layers:
        s3.put_object(Bucket=swift.bucket, Key=link_key(root, "wt/app", layer.digest),
                      Body=layer.digest.encode())
    b = drayage_factory({"storage": {"s3": drayage_s3_block(swift, root)}}, name="node-b")
    for layer in image.layers:
        status, n, got, completed = fetch(f"{b.url}/v2/wt/app/blobs/{layer.digest}")
        assert (status, got, completed) == (200, layer.digest, True)
    assert [(a["path"], a["outcome"]) for a in b.access("/blobs/")] == \
        [(f"/v2/wt/app/blobs/{layer.digest}", "miss:s3") for layer in image.layers]


def test_upstream_with_token_auth(tmp_path, drayage_factory):
    tokens = TokenServer(tmp_path / "tokens",
                         users={"puller": {"password": "pw", "access": {"priv/*": ["pull"]}}})
    tokens.start()
    pusher = TokenServer(tmp_path / "tokens-push",
                         users={"pusher": {"password": "pw", "access": {"*": ["pull", "push"]}}})
    try:
        # Push with a permissive token server, then serve with the strict one.
        pusher.start()
        reg = Registry(tmp_path / "reg", token=pusher).start()
        image = reg.push_image("priv/app", "v1", [KiB, 2 * MiB], seed=13, creds="pusher:pw")
        reg.stop()
        reg = Registry(tmp_path / "reg", token=tokens, port=reg.port).start()
        # Anonymous drayage: the upstream denies it.
        anon = drayage_factory({"upstream": {"url": reg.url}}, name="anon")
        r = requests.get(f"{anon.url}/v2/priv/app/manifests/v1", headers={"Accept": ALL_MANIFESTS})
        assert r.status_code in (401, 403)
        # With upstream credentials: the pull works and one token serves many requests.
        d = drayage_factory({"upstream": {"url": reg.url, "username": "puller",
                                          "password": "pw"}}, name="authed")
        dest = tmp_path / "pull"
        r = skopeo_pull(tmp_path / "sk", f"127.0.0.1:{d.port}", "priv/app:v1", dest)
        assert r.returncode == 0, r.stderr + d.log()[-3000:]
        assert image.layers[1].digest in dir_blobs(dest)
        granted = [t for t in tokens.token_requests() if t.get("user") == "puller"]
        assert 1 <= len(granted) <= 2
        reg.stop()
    finally:
        tokens.stop()
        pusher.stop()


def test_a_blob_larger_than_the_cache_is_streamed_verified_and_uncached(swift, tmp_path,  # noqa: F811
                                                                       drayage_factory):
    up = Registry(tmp_path / "up").start()
    try:
        image = up.push_image("big/app", "v1", [65 * MiB + 7], seed=21)
        layer = image.layers[0]
        body = layer.path.read_bytes()
        d = drayage_factory({"upstream": {"url": up.url}, "cache": {"max_size": "64MiB"}})
        url = f"{d.url}/v2/big/app/blobs/{layer.digest}"
        mark = len(up.blob_gets(layer.digest))
        # Whole, twice (nothing is cached, so each GET goes upstream), with a Range in between.
        assert fetch(url) == (200, layer.size, layer.digest, True)
        r = requests.get(url, headers={"Range": "bytes=1000-"}, timeout=60)
        assert r.status_code == 206 and r.content == body[1000:]
        assert r.headers["Content-Range"] == f"bytes 1000-{layer.size - 1}/{layer.size}"
        r = requests.get(url, headers={"Range": "bytes=10-20"}, timeout=60)
        assert r.status_code == 206 and r.content == body[10:21]
        r = requests.get(url, headers={"Range": f"bytes={layer.size}-"}, timeout=60)
        assert r.status_code == 416
        r = requests.head(url, timeout=10)
        assert r.status_code == 200 and int(r.headers["Content-Length"]) == layer.size
        assert fetch(url) == (200, layer.size, layer.digest, True)
        up.sync()
        assert len(up.blob_gets(layer.digest)) - mark >= 5
        assert d.metric("drayage_registry_responses_total", 'outcome="uncached"') > 0
        assert d.metric("drayage_registry_responses_total", 'outcome="hit"') == 0
        assert f"blob {layer.digest} is larger than cache.max_size; streaming it uncached" in \
            d.sync_log()
    finally:
        up.stop()

    # From the bucket, with one byte altered: no client ever completes the transfer.
    root = f"/big-{uuid.uuid4().hex[:8]}"
    size = 65 * MiB + 3
    good = bytes(range(256)) * (size // 256) + b"y" * (size % 256)
    digest = "sha256:" + hashlib.sha256(good).hexdigest()
    bad = bytearray(good)
    bad[size - 2] ^= 0xFF
    s3 = swift.client()
    s3.put_object(Bucket=swift.bucket, Key=blob_key(root, digest), Body=bytes(bad))
    s3.put_object(Bucket=swift.bucket, Key=link_key(root, "big/app", digest), Body=digest.encode())
    d = drayage_factory({"storage": {"s3": drayage_s3_block(swift, root)},
                         "cache": {"max_size": "64MiB"}}, name="bucket")
    url = f"{d.url}/v2/big/app/blobs/{digest}"
    status, n, got, completed = fetch(url)
    assert not completed and n < size
    # A Range ending at the altered end: the held-back last byte never comes; the transfer is cut.
    status, n, got, completed = fetch(url, {"Range": f"bytes={size - 100}-"})
    assert status == 206 and n < 100 and not completed
    s3.put_object(Bucket=swift.bucket, Key=blob_key(root, digest), Body=good)
    assert fetch(url) == (200, size, digest, True)


def test_s3_stall_timeout_comes_from_the_config(swift, tmp_path, drayage_factory):  # noqa: F811
    """storage.s3.stall_timeout: a bucket GET in which no byte moves is abandoned after it and
    retried, so the client gets the blob well before the 30 s default would have let go."""
    from harness.faultproxy import FaultProxy, Rule
    root = f"/stall-{uuid.uuid4().hex[:8]}"
    reg = Registry(tmp_path / "reg", s3=s3_storage(swift, root),
                   extra={"storage": {"redirect": {"disable": True}}}).start()
    proxy = FaultProxy("127.0.0.1", swift.port).start()
    try:
        image = reg.push_image("s3/stall", "v1", [2 * MiB + 7], seed=21)
        layer = image.layers[0]
        d = drayage_factory({"storage": {"s3": drayage_s3_block(
            swift, root, regionendpoint=proxy.endpoint, stall_timeout="1s",
            retry={"max_attempts": 3, "base_delay": "10ms", "max_delay": "100ms"})}})
        proxy.set_rules([Rule("stall_response", match=f"GET /{swift.bucket}/"
                              f"{blob_key(root, layer.digest)}", after=0, times=1)])
        # The client's own timeout is below the default stall_timeout: without the key this
        # GET would wait 30 s on the stalled attempt and fail here.
        r = requests.get(f"{d.url}/v2/s3/stall/blobs/{layer.digest}", timeout=20)
        assert r.status_code == 200, r.text
        assert "sha256:" + hashlib.sha256(r.content).hexdigest() == layer.digest
        assert proxy.stats["stall_response"] == 1
    finally:
        proxy.stop()
        reg.stop()


def test_s3_connect_timeout_comes_from_the_config(swift, tmp_path, drayage_factory):  # noqa: F811
    """storage.s3.connect_timeout: an endpoint that never completes the TCP handshake (a listener
    whose accept queue is full drops SYNs) is given up on after it, on every attempt, so the
    client gets a quick error rather than waiting attempts x 10 s."""
    import socket
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(0)
    port = hole.getsockname()[1]
    fillers = []
    try:
        # Fill the accept queue (never accepted): from now on SYNs to the port are dropped.
        for _ in range(4):
            c = socket.socket()
            c.settimeout(0.5)
            try:
                c.connect(("127.0.0.1", port))
            except OSError:
                c.close()
                break
            fillers.append(c)
        d = drayage_factory({"storage": {"s3": drayage_s3_block(
            swift, "/hole", regionendpoint=f"http://127.0.0.1:{port}", connect_timeout="500ms",
            retry={"max_attempts": 3, "base_delay": "10ms", "max_delay": "100ms"})}})
        digest = "sha256:" + hashlib.sha256(b"nothing").hexdigest()
        r = requests.get(f"{d.url}/v2/s3/hole/blobs/{digest}", timeout=20)
        assert r.status_code == 503, r.text
        assert r.json()["errors"][0]["code"] == "UNAVAILABLE"
        # The cause, on the line of this blob: the connect timed out (curl 28), not refused.
        causes = [line for line in d.sync_log().splitlines() if f"blob {digest} from s3:" in line]
        # libcurl words a connect timeout two ways, depending on which check sees it first:
        # "Failed to connect ... Timeout was reached" or "Connection timeout after N ms".
        assert len(causes) == 1, causes
        assert "Failed to connect" in causes[0] or "Connection timeout" in causes[0], causes
        assert "(curl 28)" in causes[0], causes
    finally:
        for c in fillers:
            c.close()
        hole.close()
