"""The corners of the distribution spec's push and content-management workflows (OCI
distribution-spec 1.1, "Push" and "Content Management"), each request sent to drayage and, the
same way, to docker-registry 2.8 directly (the registry behind drayage, on the same Swift bucket:
test_push_api.Stack). Where the two differ, drayage follows the spec and the test shows both
answers; docs/compatibility.md has the table.

- A chunk whose Content-Range does not start at the upload's offset, or whose length is not its
  Content-Length, is 416 with the upload's Range and Location; the registry ignores
  Content-Range and appends.
- The closing PUT may carry the last chunk, with a Content-Range checked the same way.
- Upload status: 204, Range 0-<offset-1>, Location, Docker-Upload-UUID.
- A single POST ?digest= with the blob is 201 (the spec's MAY); the registry answers 202 and
  leaves the PUT to the client (the spec's SHOULD for registries without it).
- A mount that cannot be made (blob not in `from`, `from` missing or invalid, mount= not a
  digest) opens an upload session (202), with and without `auth`.
- Locations are relative (/v2/...) for uploads and blobs: the spec allows both, the clients
  resolve them against the request URL; the registry's are absolute and carry its _state.
- No OCI-Chunk-Min-Length: chunks of any size are gathered into S3 parts of chunksize.
- Manifest PUT by digest and by tag, a body that is not the digest, a manifest naming blobs the
  registry lacks: the registry's answers, passed through.
- containerd and docker push through drayage, following its relative Locations.
- A malformed ?digest= is 400 DIGEST_INVALID; an unknown upload is 404 BLOB_UPLOAD_UNKNOWN (the
  registry: 404 BLOB_UPLOAD_INVALID for an id without its _state); DELETE is 204, then 404.

Run: DRAYAGE_BUILD_DIR=build /usr/bin/python3 -m pytest tests/integration/test_spec_push.py
"""
import json
import tarfile
import urllib.parse
import uuid

import requests

from harness.clients import Containerd, Dockerd
from harness.registry import (ALL_MANIFESTS, OCI_CONFIG, OCI_LAYER_TAR, OCI_MANIFEST,
                              Registry, build_oci_layout)
from harness.swift import swift  # noqa: F401 - session fixture
from test_auth_pull import auth_config
from test_push_api import MiB, Stack, data, digest_of, stack  # noqa: F401 - fixture

OCTETS = {"Content-Type": "application/octet-stream"}


def repo(prefix: str) -> str:
    return f"{prefix}/{uuid.uuid4().hex[:8]}"


def targets(stack):
    """(label, base URL) of the registry itself and of drayage in front of it."""
    return [("registry", stack.registry.url), ("drayage", stack.url)]


def follow(base: str, location: str, **params) -> str:
    """The URL a client sends next: the Location resolved against the request (it may be
    relative or absolute) with query parameters added to those it carries (the registry's
    _state)."""
    url = urllib.parse.urljoin(base + "/", location)
    if params:
        url += ("&" if "?" in url else "?") + urllib.parse.urlencode(params)
    return url


def start(base: str, name: str, **kw) -> requests.Response:
    r = requests.post(f"{base}/v2/{name}/blobs/uploads/", timeout=30, **kw)
    assert r.status_code == 202, r.text
    return r


def error_code(r: requests.Response) -> str:
    return r.json()["errors"][0]["code"]


def assert_session_headers(r, base, location_path, offset):
    assert r.headers["Range"] == f"0-{max(offset - 1, 0)}"
    assert urllib.parse.urlsplit(follow(base, r.headers["Location"])).path == location_path


# ---- chunked uploads ---------------------------------------------------------------------------

def test_patch_out_of_order_is_416_with_range_and_location(stack):
    blob = data(3000, 31)
    for label, base in targets(stack):
        name = repo("ooo")
        r = start(base, name)
        path = urllib.parse.urlsplit(follow(base, r.headers["Location"])).path
        r = requests.patch(follow(base, r.headers["Location"]), data=blob[:1000],
                           headers=dict(OCTETS, **{"Content-Range": "0-999"}), timeout=30)
        assert r.status_code == 202, r.text
        at = r.headers["Location"]
        # Starts past the offset (a gap), then before it (an overlap).
        gap = requests.patch(follow(base, at), data=blob[1000:2000],
                             headers=dict(OCTETS, **{"Content-Range": "1500-2499"}), timeout=30)
        if label == "registry":
            # Distribution 2.8 ignores Content-Range: the chunk is appended at 1000.
            assert gap.status_code == 202, gap.text
            assert gap.headers["Range"] == "0-1999"
            continue
        assert gap.status_code == 416, gap.text
        assert error_code(gap) == "RANGE_INVALID"
        assert_session_headers(gap, base, path, 1000)
        assert gap.headers["Docker-Upload-UUID"] == path.rsplit("/", 1)[1]
        overlap = requests.patch(follow(base, at), data=blob[500:1500],
                                 headers=dict(OCTETS, **{"Content-Range": "500-1499"}), timeout=30)
        assert overlap.status_code == 416
        # A range whose length is not the body's (Content-Length 1000, range of 100 bytes).
        short = requests.patch(follow(base, at), data=blob[1000:2000],
                               headers=dict(OCTETS, **{"Content-Range": "1000-1099"}), timeout=30)
        assert short.status_code == 416, short.text
        assert_session_headers(short, base, path, 1000)
        # Nothing of the refused chunks arrived: the status says 1000, and the upload goes on.
        st = requests.get(follow(base, at), timeout=30)
        assert st.status_code == 204
        assert_session_headers(st, base, path, 1000)
        r = requests.patch(follow(base, st.headers["Location"]), data=blob[1000:],
                           headers=dict(OCTETS, **{"Content-Range": "1000-2999"}), timeout=30)
        assert r.status_code == 202, r.text
        r = requests.put(follow(base, r.headers["Location"], digest=digest_of(blob)), timeout=30)
        assert r.status_code == 201, r.text
        stack.assert_stored(name, blob)


def test_final_put_carries_the_last_chunk(stack):
    blob = data(6 * MiB + 100, 32)  # the first chunk is a whole S3 part, the last one is not
    first = 5 * MiB
    for label, base in targets(stack):
        name = repo("lastput")
        r = start(base, name)
        r = requests.patch(follow(base, r.headers["Location"]), data=blob[:first],
                           headers=dict(OCTETS, **{"Content-Range": f"0-{first - 1}"}), timeout=60)
        assert r.status_code == 202, r.text
        at = r.headers["Location"]
        last = {"Content-Range": f"{first}-{len(blob) - 1}"}
        # A closing PUT whose range does not follow on.
        wrong = requests.put(follow(base, at, digest=digest_of(blob)), data=blob[first + 1:],
                             headers=dict(OCTETS, **{"Content-Range": f"{first + 1}-{len(blob)}"}),
                             timeout=60)
        if label == "registry":
            # Distribution 2.8 appends it anyway: the digest is wrong and the upload is gone.
            assert wrong.status_code == 400, wrong.text
            assert error_code(wrong) == "DIGEST_INVALID"
            r = start(base, name)
            r = requests.patch(follow(base, r.headers["Location"]), data=blob[:first],
                               headers=OCTETS, timeout=60)
            at = r.headers["Location"]
        else:
            assert wrong.status_code == 416, wrong.text
            assert error_code(wrong) == "RANGE_INVALID"
            assert wrong.headers["Range"] == f"0-{first - 1}"
        r = requests.put(follow(base, at, digest=digest_of(blob)), data=blob[first:],
                         headers=dict(OCTETS, **last), timeout=60)
        assert r.status_code == 201, r.text
        assert r.headers["Docker-Content-Digest"] == digest_of(blob)
        stack.assert_stored(name, blob)
        got = requests.get(follow(base, r.headers["Location"]), timeout=60)
        assert got.status_code == 200 and got.content == blob
    stack.assert_clean()


def test_upload_status(stack):
    for label, base in targets(stack):
        name = repo("status")
        r = start(base, name)
        path = urllib.parse.urlsplit(follow(base, r.headers["Location"])).path
        uid = r.headers["Docker-Upload-UUID"]
        assert path.endswith("/" + uid)
        total = 0
        for sent in (0, 1, 4096):
            if sent:
                r = requests.patch(follow(base, r.headers["Location"]), data=data(sent, sent),
                                   headers=OCTETS, timeout=30)
                assert r.status_code == 202
                total += sent
            st = requests.get(follow(base, r.headers["Location"]), timeout=30)
            assert st.status_code == 204, (label, st.text)
            assert st.content == b""
            assert st.headers["Docker-Upload-UUID"] == uid
            # "0-0" for an empty upload too: what Distribution answers and clients expect.
            assert_session_headers(st, base, path, total)
            r = st
        assert requests.delete(follow(base, r.headers["Location"]), timeout=30).status_code == 204


def test_any_chunk_size_and_no_chunk_min_length(stack):
    """The S3 parts' minimum (chunksize) is drayage's business: chunks of any size are gathered
    into parts, so the POST names no OCI-Chunk-Min-Length, and tiny chunks across a part
    boundary make the same blob."""
    blob = data(5 * MiB + 5000, 33)
    name = repo("tiny")
    r = start(stack.url, name)
    assert "OCI-Chunk-Min-Length" not in r.headers
    assert "OCI-Chunk-Min-Length" not in start(stack.registry.url, name).headers
    offset = 0
    sizes = [1, 7, 100, 5 * MiB - 1000, 1, 999, 3000, 892]
    for n in sizes + [len(blob) - sum(sizes)]:
        piece = blob[offset:offset + n]
        r = requests.patch(follow(stack.url, r.headers["Location"]), data=piece,
                           headers=dict(OCTETS, **{"Content-Range":
                                                   f"{offset}-{offset + n - 1}"}), timeout=60)
        assert r.status_code == 202, r.text
        offset += n
        assert r.headers["Range"] == f"0-{offset - 1}"
    r = requests.put(follow(stack.url, r.headers["Location"], digest=digest_of(blob)), timeout=60)
    assert r.status_code == 201, r.text
    stack.assert_stored(name, blob)


# ---- monolithic uploads ------------------------------------------------------------------------

def test_single_post_and_post_then_put(stack):
    blob = data(4000, 34)
    d = digest_of(blob)
    for label, base in targets(stack):
        name = repo("mono")
        r = requests.post(f"{base}/v2/{name}/blobs/uploads/?digest={d}", data=blob,
                          headers=OCTETS, timeout=30)
        if label == "registry":
            # Distribution 2.8 has no single-POST upload: 202, the client PUTs the blob.
            assert r.status_code == 202, r.text
            r = requests.put(follow(base, r.headers["Location"], digest=d), data=blob,
                             headers=OCTETS, timeout=30)
        assert r.status_code == 201, r.text
        assert r.headers["Docker-Content-Digest"] == d
        assert urllib.parse.urlsplit(follow(base, r.headers["Location"])).path == \
            f"/v2/{name}/blobs/{d}"
        stack.assert_stored(name, blob)
        # POST, then the whole blob in one PUT.
        name = repo("postput")
        r = start(base, name)
        r = requests.put(follow(base, r.headers["Location"], digest=d), data=blob,
                         headers=OCTETS, timeout=30)
        assert r.status_code == 201, r.text
        stack.assert_stored(name, blob)


# ---- cross-repository mounts -------------------------------------------------------------------

def mount_fallbacks(base: str, name: str, source: str, auth=None):
    """Mount requests that cannot be made; each must open an upload session that works."""
    missing = digest_of(b"never pushed anywhere " + name.encode())
    queries = [f"mount={missing}&from={source}",  # not in `from`
               f"mount={missing}",                 # no `from`
               f"mount={missing}&from=Not..Valid",  # `from` outside the grammar
               f"mount=sha256:nothex&from={source}"]  # mount= is no digest
    for q in queries:
        r = requests.post(f"{base}/v2/{name}/blobs/uploads/?{q}", auth=auth, timeout=30)
        assert r.status_code == 202, (q, r.status_code, r.text)
        assert r.headers["Range"] == "0-0"
        blob = data(100, len(q))
        r = requests.put(follow(base, r.headers["Location"], digest=digest_of(blob)), data=blob,
                         headers=OCTETS, auth=auth, timeout=30)
        assert r.status_code == 201, (q, r.text)


def test_mount_that_cannot_be_made_opens_an_upload(stack):
    blob = data(2000, 35)
    source = repo("mountsrc")
    r = requests.post(f"{stack.url}/v2/{source}/blobs/uploads/?digest={digest_of(blob)}",
                      data=blob, timeout=30)
    assert r.status_code == 201
    for label, base in targets(stack):
        name = repo("mountdst")
        mount_fallbacks(base, name, source)
        # The mount of a blob that is there still mounts.
        r = requests.post(f"{base}/v2/{name}/blobs/uploads/?mount={digest_of(blob)}&from={source}",
                          timeout=30)
        assert r.status_code == 201, (label, r.text)
        stack.assert_stored(name, blob)


def test_mount_that_cannot_be_made_opens_an_upload_with_auth(swift, drayage_factory, tmp_path):
    """With `auth` the mount source must be readable and hold the digest; a mount that is not
    possible is an upload like the registry's, not a 404 or a 401. A source the client may not
    read still gets the challenge (a token for `from` may be missing)."""
    rules = [{"repositories": ["team/**"], "pull": ["alice"], "push": ["alice"]},
             {"repositories": ["private/**"], "pull": ["bob"], "push": ["bob"]}]
    s = Stack(swift, drayage_factory, tmp_path, name="specauth",
              drayage_extra={"auth": auth_config(tmp_path / "authcfg", rules)})
    reg = Registry(tmp_path / "htreg", htpasswd={"alice": "pw"}).start()
    alice = ("alice", "pw")
    try:
        blob = data(2000, 36)
        r = requests.post(f"{s.url}/v2/team/src/blobs/uploads/?digest={digest_of(blob)}",
                          data=blob, auth=alice, timeout=30)
        assert r.status_code == 201, r.text
        for base in (reg.url, s.url):
            mount_fallbacks(base, "team/dst", "team/src", auth=alice)
        r = requests.post(f"{s.url}/v2/team/dst/blobs/uploads/?mount={digest_of(blob)}"
                          "&from=team/src", auth=alice, timeout=30)
        assert r.status_code == 201, r.text
        r = requests.post(f"{s.url}/v2/team/dst/blobs/uploads/?mount={digest_of(blob)}"
                          "&from=private/x", auth=alice, timeout=30)
        assert r.status_code == 401, r.text
        assert "repository:private/x:pull" in r.headers["WWW-Authenticate"]
    finally:
        reg.stop()
        s.stop()


# ---- Location headers --------------------------------------------------------------------------

def test_locations_are_relative_and_consistent(stack):
    """drayage answers paths (/v2/...), the same upload URL from POST, PATCH and GET, and the
    blob's path from PUT; a client resolves them against the URL it asked (the spec allows
    relative Locations; docker, containerd and skopeo resolve them). The registry's are absolute
    and change with every request (its _state)."""
    blob = data(1500, 37)
    name = repo("loc")
    r = start(stack.url, name)
    loc = r.headers["Location"]
    uid = r.headers["Docker-Upload-UUID"]
    assert loc == f"/v2/{name}/blobs/uploads/{uid}"
    r = requests.patch(stack.url + loc, data=blob[:500], headers=OCTETS, timeout=30)
    assert r.headers["Location"] == loc
    assert requests.get(stack.url + loc, timeout=30).headers["Location"] == loc
    r = requests.put(f"{stack.url}{loc}?digest={digest_of(blob)}", data=blob[500:], timeout=30)
    assert r.status_code == 201
    assert r.headers["Location"] == f"/v2/{name}/blobs/{digest_of(blob)}"
    r = start(stack.registry.url, name)
    assert r.headers["Location"].startswith(stack.registry.url + f"/v2/{name}/blobs/uploads/")
    assert "_state=" in r.headers["Location"]


# ---- manifests ---------------------------------------------------------------------------------

def test_manifest_put_by_digest_and_tag(stack):
    cfg = json.dumps({"architecture": "amd64", "os": "linux",
                      "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    layer = data(3000, 38)
    name = repo("mani")
    for b in (cfg, layer):
        r = requests.post(f"{stack.url}/v2/{name}/blobs/uploads/?digest={digest_of(b)}", data=b,
                          timeout=30)
        assert r.status_code == 201

    def manifest(config_digest, tag_note):
        return json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(cfg)},
            "layers": [{"mediaType": OCI_LAYER_TAR, "digest": digest_of(layer),
                        "size": len(layer)}],
            "annotations": {"note": tag_note}}).encode()

    headers = {"Content-Type": OCI_MANIFEST}
    for label, base in targets(stack):
        host = urllib.parse.urlsplit(base).netloc
        m = manifest(digest_of(cfg), label)
        md = digest_of(m)
        for ref in (md, f"v-{label}"):
            r = requests.put(f"{base}/v2/{name}/manifests/{ref}", data=m, headers=headers,
                             timeout=30)
            assert r.status_code == 201, (label, ref, r.text)
            assert r.headers["Docker-Content-Digest"] == md
            # The registry's absolute Location; through drayage it names drayage
            # (X-Forwarded-Host), so the client comes back the same way.
            assert r.headers["Location"] == f"http://{host}/v2/{name}/manifests/{md}"
        got = requests.get(f"{base}/v2/{name}/manifests/v-{label}",
                           headers={"Accept": OCI_MANIFEST}, timeout=30)
        assert got.status_code == 200 and got.content == m
        # The body is not the digest in the URL.
        r = requests.put(f"{base}/v2/{name}/manifests/{digest_of(m + b' ')}", data=m,
                         headers=headers, timeout=30)
        assert r.status_code == 400, r.text
        assert error_code(r) == "DIGEST_INVALID"
        # A manifest naming a blob the registry does not have.
        unknown = manifest(digest_of(b"no such config"), label)
        r = requests.put(f"{base}/v2/{name}/manifests/broken", data=unknown, headers=headers,
                         timeout=30)
        assert r.status_code == 400, r.text
        assert error_code(r) == "MANIFEST_BLOB_UNKNOWN"


# ---- errors ------------------------------------------------------------------------------------

def test_error_statuses(stack):
    blob = data(700, 39)
    for label, base in targets(stack):
        name = repo("errs")
        r = start(base, name)
        at = r.headers["Location"]
        for bad in ("sha256:zz", "sha256", "nothex", "sha256:" + "A" * 64):
            r = requests.put(follow(base, at, digest=bad), data=blob, headers=OCTETS, timeout=30)
            assert r.status_code == 400, (label, bad, r.text)
            assert error_code(r) == "DIGEST_INVALID"
        if label == "drayage":
            # Refused before a byte was taken: the upload is as it was.
            st = requests.get(follow(base, at), timeout=30)
            assert st.status_code == 204 and st.headers["Range"] == "0-0"
            # The monolithic POST checks its digest= too (the registry ignores it: 202).
            r = requests.post(f"{base}/v2/{name}/blobs/uploads/?digest=sha256:zz", data=blob,
                              timeout=30)
            assert r.status_code == 400 and error_code(r) == "DIGEST_INVALID"
        # An upload nobody started.
        unknown = f"{base}/v2/{name}/blobs/uploads/{uuid.uuid4()}"
        for method in ("GET", "PATCH", "PUT", "DELETE"):
            r = requests.request(method, unknown, timeout=30)
            assert r.status_code == 404, (label, method, r.text)
            # Distribution 2.8 cannot tell an unknown upload from one without its _state.
            assert error_code(r) == ("BLOB_UPLOAD_INVALID" if label == "registry"
                                     else "BLOB_UPLOAD_UNKNOWN")
        # An id no upload can have (outside drayage's id grammar): unknown too, not a client error.
        r = requests.get(f"{base}/v2/{name}/blobs/uploads/not.a.uuid", timeout=30)
        assert r.status_code == 404, (label, r.text)
        if label != "registry":
            assert error_code(r) == "BLOB_UPLOAD_UNKNOWN"
        # DELETE of an upload: 204, then it is unknown.
        r = start(base, name)
        at = r.headers["Location"]
        r = requests.delete(follow(base, at), timeout=30)
        assert r.status_code == 204, r.text
        for method in ("DELETE", "GET"):
            r = requests.request(method, follow(base, at), timeout=30)
            assert r.status_code == 404, (label, method)
            assert error_code(r) == "BLOB_UPLOAD_UNKNOWN"


def test_containerd_pushes_through_relative_locations(stack, tmp_path):
    """A real client follows drayage's relative Locations: containerd (ctr 1.6) pushes an image
    (a layer of two S3 parts, a small one, config, manifest) and the registry serves it."""
    layout = tmp_path / "layout"
    manifest, config, layers = build_oci_layout(layout, "v1", [2048, 5 * MiB + 1024], seed=40)
    archive = tmp_path / "image.tar"
    with tarfile.open(archive, "w") as tar:
        for entry in sorted(layout.iterdir()):
            tar.add(entry, arcname=entry.name)
    name = repo("ctr")
    target = f"127.0.0.1:{stack.drayage.port}/{name}:v1"
    with Containerd(tmp_path / "ctrd") as c:
        r = c.ctr("image", "import", "--base-name", "local/app", "--all-platforms",
                  "--no-unpack", str(archive))
        assert r.returncode == 0, r.stdout + r.stderr
        r = c.ctr("image", "push", "--plain-http", target, "local/app:v1")
        assert r.returncode == 0, r.stdout + r.stderr + stack.drayage.log()[-2000:]
    for blob in [config] + layers:
        stack.assert_stored(name, blob.path.read_bytes())
    st, _, body = stack.registry.get(f"/v2/{name}/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert st == 200 and body == manifest


def test_docker_pushes_through_relative_locations(stack, tmp_path):
    """The same with dockerd 20.10: an image built from scratch (a layer of its own, so it is
    uploaded, not mounted) pushed to drayage; the registry then serves its manifest."""
    context = tmp_path / "context"
    context.mkdir()
    (context / "payload.bin").write_bytes(data(6 * MiB, 41))
    (context / "Dockerfile").write_text("FROM scratch\nCOPY payload.bin /payload.bin\n")
    name = repo("docker")
    target = f"127.0.0.1:{stack.drayage.port}/{name}:v1"
    with Containerd(tmp_path / "ctrd") as c, Dockerd(tmp_path / "dockerd", c, stack.url) as dk:
        built = dk.docker("build", "-q", "-t", target, str(context))
        assert built.returncode == 0, built.stdout + built.stderr
        r = dk.docker("push", target)
        assert r.returncode == 0, r.stdout + r.stderr + stack.drayage.log()[-2000:]
        pushed = dk.repo_digest(target)
    st, headers, _ = stack.registry.get(f"/v2/{name}/manifests/v1",
                                        headers={"Accept": ALL_MANIFESTS})
    assert st == 200
    assert headers["Docker-Content-Digest"] == pushed
