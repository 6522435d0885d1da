"""The push path (src/registry/push.cpp, forwarder.cpp) with real peers: Swift s3api as the bucket,
docker-registry (s3 driver, same bucket and rootdirectory) as the registry behind drayage, and the
OCI distribution-spec push workflow spoken with `requests`.

After every push the bucket is checked directly (botocore): blob data and link objects where the
registry keeps them, and nothing left behind (no multipart upload, no temporary object) after a
wrong digest, a cancel, a client that disconnects mid-PATCH, or an expired session.

Run: DRAYAGE_BUILD_DIR=build-x /usr/bin/python3 -m pytest tests/integration/test_push_api.py
"""
import hashlib
import json
import socket
import time
import uuid

import pytest
import requests

from harness.registry import Registry
from harness.swift import swift  # noqa: F401 - session fixture

MiB = 1024 * 1024
API = {"Docker-Distribution-API-Version": "registry/2.0"}


def data(n: int, seed: int = 0) -> bytes:
    """n deterministic pseudo-random bytes (incompressible, differs per seed)."""
    out = bytearray()
    block = hashlib.sha256(f"push{seed}".encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:n])


def digest_of(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


class Stack:
    """Swift + docker-registry + drayage on one bucket under a rootdirectory of their own."""

    def __init__(self, swift, drayage_factory, tmp_path, drayage_extra=None, s3_endpoint=None,
                 name="push"):
        self.swift = swift
        self.root = f"t{uuid.uuid4().hex[:10]}"
        self.s3 = swift.client()
        reg_s3 = {"accesskey": swift.access_key, "secretkey": swift.secret_key,
                  "region": swift.region, "regionendpoint": swift.endpoint,
                  "bucket": swift.bucket, "secure": False, "v4auth": True,
                  "chunksize": 5 * MiB, "rootdirectory": "/" + self.root}
        self.registry = Registry(tmp_path / f"{name}-registry", s3=reg_s3,
                                 extra={"storage": {"redirect": {"disable": True}}}).start()
        dcfg = {
            "upstream": {"url": self.registry.url},
            "storage": {"s3": {
                "accesskey": swift.access_key, "secretkey": swift.secret_key,
                "region": swift.region, "regionendpoint": s3_endpoint or swift.endpoint,
                "bucket": swift.bucket, "secure": False, "chunksize": "5MiB",
                "rootdirectory": "/" + self.root,
                "multipart": {"concurrency": 4},
                "retry": {"max_attempts": 8, "base_delay": "10ms", "max_delay": "200ms"},
            }},
        }
        if drayage_extra:
            from harness.drayage import deep_merge
            dcfg = deep_merge(dcfg, drayage_extra)
        self.drayage = drayage_factory(dcfg, name=f"{name}-drayage")
        self.url = self.drayage.url

    def stop(self):
        self.registry.stop()

    # ---- bucket checks ------------------------------------------------------------------
    def keys(self, prefix="") -> list:
        out, token = [], None
        while True:
            kw = {"Bucket": self.swift.bucket, "Prefix": self.root + "/" + prefix}
            if token:
                kw["ContinuationToken"] = token
            r = self.s3.list_objects_v2(**kw)
            out += [o["Key"] for o in r.get("Contents", [])]
            if not r.get("IsTruncated"):
                return out
            token = r["NextContinuationToken"]

    def multipart_uploads(self) -> list:
        r = self.s3.list_multipart_uploads(Bucket=self.swift.bucket, Prefix=self.root + "/")
        return [(u["Key"], u["UploadId"]) for u in r.get("Uploads", [])]

    def temp_objects(self) -> list:
        return self.keys("_drayage/")

    def blob_key(self, digest: str) -> str:
        hexd = digest.split(":", 1)[1]
        return f"{self.root}/docker/registry/v2/blobs/sha256/{hexd[:2]}/{hexd}/data"

    def link_key(self, repo: str, digest: str) -> str:
        return (f"{self.root}/docker/registry/v2/repositories/{repo}/_layers/sha256/"
                f"{digest.split(':', 1)[1]}/link")

    def get_object(self, key: str) -> bytes | None:
        try:
            return self.s3.get_object(Bucket=self.swift.bucket, Key=key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None

    def assert_clean(self, timeout=10.0):
        """No multipart upload and no temporary object left (aborts may still be in flight)."""
        deadline = time.monotonic() + timeout
        while True:
            ups, tmp = self.multipart_uploads(), self.temp_objects()
            if not ups and not tmp:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"left in the bucket: uploads {ups}, objects {tmp}")
            time.sleep(0.2)

    def assert_stored(self, repo: str, blob: bytes):
        d = digest_of(blob)
        assert self.get_object(self.blob_key(d)) == blob
        assert self.get_object(self.link_key(repo, d)) == d.encode()

    def metric(self, name: str, labels: str = "") -> float:
        return self.drayage.metric(name, labels)


@pytest.fixture
def stack(swift, drayage_factory, tmp_path):
    s = Stack(swift, drayage_factory, tmp_path)
    yield s
    s.stop()


def start_upload(url: str, repo: str) -> str:
    r = requests.post(f"{url}/v2/{repo}/blobs/uploads/", timeout=30)
    assert r.status_code == 202, r.text
    assert r.headers["Range"] == "0-0"
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    uid = r.headers["Docker-Upload-UUID"]
    assert r.headers["Location"] == f"/v2/{repo}/blobs/uploads/{uid}"
    return r.headers["Location"]


# ---- the OCI push workflow ---------------------------------------------------------------------

def test_monolithic_post_then_put(stack):
    blob = data(300 * 1024, 1)
    loc = start_upload(stack.url, "team/app")
    r = requests.put(f"{stack.url}{loc}?digest={digest_of(blob)}", data=blob,
                     headers={"Content-Type": "application/octet-stream"}, timeout=60)
    assert r.status_code == 201, r.text
    assert r.headers["Location"] == f"/v2/team/app/blobs/{digest_of(blob)}"
    assert r.headers["Docker-Content-Digest"] == digest_of(blob)
    stack.assert_stored("team/app", blob)
    stack.assert_clean()
    # The registry behind, on the same bucket, serves it.
    st, _, body = stack.registry.get(f"/v2/team/app/blobs/{digest_of(blob)}")
    assert st == 200 and body == blob
    # The session is gone once the blob is in place.
    assert requests.get(f"{stack.url}{loc}", timeout=10).status_code == 404


def test_post_with_digest_single_request(stack):
    blob = data(7 * MiB + 3, 2)  # two parts straight to the data key
    r = requests.post(f"{stack.url}/v2/one/blobs/uploads/?digest={digest_of(blob)}", data=blob,
                      timeout=60)
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == digest_of(blob)
    stack.assert_stored("one", blob)
    stack.assert_clean()
    # Pushed again to another repository: not stored again, only linked.
    mark = stack.swift.log_mark()
    r = requests.post(f"{stack.url}/v2/two/blobs/uploads/?digest={digest_of(blob)}", data=blob,
                      timeout=60)
    assert r.status_code == 201, r.text
    stack.assert_stored("two", blob)
    puts = [q for q in stack.swift.s3_requests(mark) if q.method in ("PUT", "POST")]
    assert [q.path.split("?")[0] for q in puts] == ["/" + stack.swift.bucket + "/" +
                                                    stack.link_key("two", digest_of(blob))]


def test_post_with_wrong_digest_leaves_nothing(stack):
    blob = data(6 * MiB, 3)
    wrong = digest_of(b"something else")
    r = requests.post(f"{stack.url}/v2/one/blobs/uploads/?digest={wrong}", data=blob, timeout=60)
    assert r.status_code == 400
    assert r.json()["errors"][0]["code"] == "DIGEST_INVALID"
    assert stack.get_object(stack.blob_key(wrong)) is None
    assert stack.get_object(stack.blob_key(digest_of(blob))) is None
    stack.assert_clean()


def test_chunked_patches_with_content_range_status_and_gap(stack):
    blob = data(12 * MiB + 17, 4)
    loc = start_upload(stack.url, "chunky")
    pieces = [blob[:5 * MiB], blob[5 * MiB:5 * MiB + 1000], blob[5 * MiB + 1000:]]
    offset = 0
    for i, piece in enumerate(pieces):
        hdr = {"Content-Type": "application/octet-stream",
               "Content-Range": f"{offset}-{offset + len(piece) - 1}"}
        if i == 1:
            # A gap: the range does not follow on from what was received.
            bad = dict(hdr, **{"Content-Range": f"{offset + 10}-{offset + 10 + len(piece) - 1}"})
            r = requests.patch(f"{stack.url}{loc}", data=piece, headers=bad, timeout=60)
            assert r.status_code == 416, r.text
            assert r.headers["Range"] == f"0-{offset - 1}"
        # Chunked transfer encoding for the middle piece (a generator body), Content-Length else.
        body = iter([piece[:300], piece[300:]]) if i == 1 else piece
        r = requests.patch(f"{stack.url}{loc}", data=body, headers=hdr, timeout=60)
        assert r.status_code == 202, r.text
        offset += len(piece)
        assert r.headers["Range"] == f"0-{offset - 1}"
        assert r.headers["Location"] == loc
        st = requests.get(f"{stack.url}{loc}", timeout=10)
        assert st.status_code == 204
        assert st.headers["Range"] == f"0-{offset - 1}"
        assert st.headers["Docker-Upload-UUID"] == loc.rsplit("/", 1)[1]
    r = requests.put(f"{stack.url}{loc}?digest={digest_of(blob)}", timeout=60)
    assert r.status_code == 201, r.text
    stack.assert_stored("chunky", blob)
    stack.assert_clean()
    st, _, body = stack.registry.get(f"/v2/chunky/blobs/{digest_of(blob)}")
    assert st == 200 and body == blob


def test_final_put_with_body_and_empty_blob(stack):
    blob = data(2 * MiB, 5)
    loc = start_upload(stack.url, "lastpiece")
    r = requests.patch(f"{stack.url}{loc}", data=blob[:MiB], timeout=60)
    assert r.status_code == 202
    r = requests.put(f"{stack.url}{loc}?digest={digest_of(blob)}", data=blob[MiB:], timeout=60)
    assert r.status_code == 201, r.text
    stack.assert_stored("lastpiece", blob)
    loc = start_upload(stack.url, "lastpiece")
    r = requests.put(f"{stack.url}{loc}?digest={digest_of(b'')}", timeout=60)
    assert r.status_code == 201, r.text
    stack.assert_stored("lastpiece", b"")
    stack.assert_clean()


def test_mount_from_another_repository(stack):
    blob = data(100 * 1024, 6)
    d = digest_of(blob)
    r = requests.post(f"{stack.url}/v2/src/blobs/uploads/?digest={d}", data=blob, timeout=60)
    assert r.status_code == 201
    r = requests.post(f"{stack.url}/v2/dst/blobs/uploads/?mount={d}&from=src", timeout=30)
    assert r.status_code == 201, r.text
    assert r.headers["Location"] == f"/v2/dst/blobs/{d}"
    assert r.headers["Docker-Content-Digest"] == d
    stack.assert_stored("dst", blob)
    # A blob the bucket does not hold: a normal upload session instead.
    missing = digest_of(b"not pushed")
    r = requests.post(f"{stack.url}/v2/dst/blobs/uploads/?mount={missing}&from=src", timeout=30)
    assert r.status_code == 202
    assert stack.get_object(stack.link_key("dst", missing)) is None
    assert requests.delete(f"{stack.url}{r.headers['Location']}", timeout=10).status_code == 204


def test_wrong_digest_at_put_leaves_nothing(stack):
    blob = data(11 * MiB, 7)  # two full parts already uploaded before the PUT
    loc = start_upload(stack.url, "bad")
    assert requests.patch(f"{stack.url}{loc}", data=blob, timeout=60).status_code == 202
    wrong = digest_of(blob + b"x")
    r = requests.put(f"{stack.url}{loc}?digest={wrong}", timeout=60)
    assert r.status_code == 400
    assert r.json()["errors"][0]["code"] == "DIGEST_INVALID"
    assert stack.keys("docker/registry/v2/blobs/") == []
    stack.assert_clean()


def test_cancel_and_unknown_upload(stack):
    loc = start_upload(stack.url, "cancel")
    assert requests.patch(f"{stack.url}{loc}", data=data(6 * MiB, 8), timeout=60).status_code == 202
    r = requests.delete(f"{stack.url}{loc}", timeout=10)
    assert r.status_code == 204
    stack.assert_clean()
    for method in ("PATCH", "PUT", "GET", "DELETE"):
        r = requests.request(method, f"{stack.url}{loc}?digest={digest_of(b'')}", data=b"x",
                             timeout=10)
        assert r.status_code == 404, method
        assert r.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
    # An id from another repository is unknown too.
    loc2 = start_upload(stack.url, "cancel")
    r = requests.get(f"{stack.url}{loc2.replace('/cancel/', '/other/')}", timeout=10)
    assert r.status_code == 404
    requests.delete(f"{stack.url}{loc2}", timeout=10)


def test_upload_ids_are_random_uuids(stack):
    ids = set()
    for _ in range(20):
        loc = start_upload(stack.url, "ids")
        uid = loc.rsplit("/", 1)[1]
        assert uuid.UUID(uid).version == 4
        ids.add(uid)
        requests.delete(f"{stack.url}{loc}", timeout=10)
    assert len(ids) == 20


def test_client_disconnects_mid_patch(stack):
    loc = start_upload(stack.url, "gone")
    total = 40 * MiB
    mark = stack.swift.log_mark()
    s = socket.create_connection(("127.0.0.1", stack.drayage.port))
    s.sendall((f"PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Length: {total}\r\n"
               "Content-Type: application/octet-stream\r\n\r\n").encode())
    chunk = data(MiB, 9)
    for _ in range(12):  # 12 of 40 MiB: two whole parts
        s.sendall(chunk)
    # Gone once parts are in S3, so that there is something to clean up.
    deadline = time.monotonic() + 30
    while not [q for q in stack.swift.s3_requests(mark)
               if q.method == "PUT" and "partNumber=" in q.query and q.status == 200]:
        assert time.monotonic() < deadline, "no part reached S3"
        time.sleep(0.1)
    s.close()
    stack.assert_clean(timeout=20)
    assert requests.get(f"{stack.url}{loc}", timeout=10).status_code == 404


def test_pushed_blob_is_a_cache_hit_on_first_pull(stack):
    blob = data(3 * MiB, 10)
    d = digest_of(blob)
    before = stack.metric("drayage_push_cache_fills_total", 'outcome="complete"')
    loc = start_upload(stack.url, "hot")
    assert requests.patch(f"{stack.url}{loc}", data=blob, timeout=60).status_code == 202
    assert requests.put(f"{stack.url}{loc}?digest={d}", timeout=60).status_code == 201
    deadline = time.monotonic() + 30
    while stack.metric("drayage_push_cache_fills_total", 'outcome="complete"') < before + 1:
        assert time.monotonic() < deadline, "the pushed blob never entered the cache"
        time.sleep(0.1)
    hits = stack.metric("drayage_registry_responses_total", 'kind="blob",outcome="hit"')
    r = requests.get(f"{stack.url}/v2/hot/blobs/{d}", timeout=30)
    assert r.status_code == 200 and r.content == blob
    assert stack.metric("drayage_registry_responses_total",
                        'kind="blob",outcome="hit"') == hits + 1


# ---- passthrough -------------------------------------------------------------------------------

def test_manifest_put_and_delete_pass_through(stack):
    cfg = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    layer = data(4096, 11)
    for b in (cfg, layer):
        r = requests.post(f"{stack.url}/v2/pt/app/blobs/uploads/?digest={digest_of(b)}", data=b,
                          timeout=30)
        assert r.status_code == 201
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest_of(cfg), "size": len(cfg)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest_of(layer), "size": len(layer)}],
    }).encode()
    md = digest_of(manifest)
    r = requests.put(f"{stack.url}/v2/pt/app/manifests/v1", data=manifest,
                     headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
                     timeout=30)
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == md
    # The registry built its Location from X-Forwarded-Host: it points back at drayage.
    assert r.headers["Location"].endswith(f"/v2/pt/app/manifests/{md}")
    assert f"127.0.0.1:{stack.drayage.port}" in r.headers["Location"] or \
        r.headers["Location"].startswith("/")
    st, _, body = stack.registry.get("/v2/pt/app/manifests/v1", headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert st == 200 and body == manifest
    # Manifest and blob DELETE go to the registry too.
    r = requests.delete(f"{stack.url}/v2/pt/app/manifests/{md}", timeout=30)
    assert r.status_code == 202, r.text
    st, _, _ = stack.registry.get(f"/v2/pt/app/manifests/{md}")
    assert st == 404
    # Errors come back unchanged.
    r = requests.put(f"{stack.url}/v2/pt/app/manifests/v2", data=b"{not json",
                     headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
                     timeout=30)
    assert r.status_code == 400
    assert r.json()["errors"][0]["code"] == "MANIFEST_INVALID"


def test_passthrough_401_challenge(swift, drayage_factory, tmp_path):
    reg = Registry(tmp_path / "authreg", htpasswd={"alice": "secret"}).start()
    try:
        d = drayage_factory({"upstream": {"url": reg.url}}, name="authdrayage")
        r = requests.put(f"{d.url}/v2/x/manifests/v1", data=b"{}", timeout=30)
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"].startswith("Basic realm=")
        assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
        # With credentials the request reaches the registry (and fails there on the body).
        missing = digest_of(b"never pushed")
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": missing, "size": 12},
            "layers": []}).encode()
        r = requests.put(f"{d.url}/v2/x/manifests/v1", data=manifest, auth=("alice", "secret"),
                         headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
                         timeout=30)
        assert r.status_code == 400, r.text
        assert r.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
    finally:
        reg.stop()


def test_one_patch_at_a_time(stack):
    loc = start_upload(stack.url, "serial")
    first = data(MiB, 12)
    s = socket.create_connection(("127.0.0.1", stack.drayage.port))
    try:
        s.sendall((f"PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(first)}\r\n"
                   "Content-Type: application/octet-stream\r\n\r\n").encode() + first[:1000])
        # The first PATCH is streaming (its status shows the bytes arriving): a second one waits.
        deadline = time.monotonic() + 10
        while requests.get(f"{stack.url}{loc}", timeout=10).headers["Range"] != "0-999":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        r = requests.patch(f"{stack.url}{loc}", data=b"late", timeout=10)
        assert r.status_code == 409
        assert r.json()["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"
        s.sendall(first[1000:])
        assert s.recv(4096).startswith(b"HTTP/1.1 202")
    finally:
        s.close()
    r = requests.put(f"{stack.url}{loc}?digest={digest_of(first)}", timeout=30)
    assert r.status_code == 201, r.text
    stack.assert_stored("serial", first)


def test_max_sessions_bounds_open_uploads(swift, drayage_factory, tmp_path):
    """uploads.max_sessions: a new upload past the limit gets 429 TOOMANYREQUESTS; finishing or
    cancelling one makes room."""
    s = Stack(swift, drayage_factory, tmp_path, drayage_extra={"uploads": {"max_sessions": 2}},
              name="maxsessions")
    try:
        first = start_upload(s.url, "limits")
        second = start_upload(s.url, "limits")
        r = requests.post(f"{s.url}/v2/limits/blobs/uploads/", timeout=30)
        assert r.status_code == 429, r.text
        assert r.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
        assert requests.delete(f"{s.url}{first}", timeout=10).status_code == 204
        blob = data(1000, 3)
        r = requests.put(f"{s.url}{second}?digest={digest_of(blob)}", data=blob, timeout=30)
        assert r.status_code == 201, r.text
        third = start_upload(s.url, "limits")
        fourth = start_upload(s.url, "limits")
        assert requests.post(f"{s.url}/v2/limits/blobs/uploads/", timeout=30).status_code == 429
        for loc in (third, fourth):
            assert requests.delete(f"{s.url}{loc}", timeout=10).status_code == 204
        s.assert_clean()
    finally:
        s.stop()
