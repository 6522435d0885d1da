"""Pushes with a real client (skopeo 1.9) through drayage into Swift, read back with skopeo straight
from the docker-registry on the same bucket; parallel parts and bounded memory for a 300 MiB layer;
pushes through a fault-injecting proxy between drayage and Swift; leftovers cleaned at start-up;
idle sessions expire.

Run: DRAYAGE_BUILD_DIR=build-x /usr/bin/python3 -m pytest tests/integration/test_push_skopeo.py
"""
import hashlib
import json
import socket
import subprocess
import time

import requests

from harness.drayage import Drayage
from harness.faultproxy import FaultProxy, Rule
from harness.net import peak_rss_kib
from harness.registry import build_oci_layout, skopeo_env
from harness.swift import swift  # noqa: F401 - session fixture
from test_push_api import Stack, data, digest_of

MiB = 1024 * 1024
CHUNK = 5 * MiB
CONCURRENCY = 4


def skopeo(*args, timeout=900):
    res = subprocess.run(["skopeo", *args], capture_output=True, text=True, env=skopeo_env(),
                         timeout=timeout)
    assert res.returncode == 0, f"skopeo {' '.join(args)} failed:\n{res.stderr}"
    return res


def push_and_read_back(stack, tmp_path, repo, sizes, seed):
    """skopeo copy oci -> drayage, then docker-registry (not drayage) -> oci; returns the layers."""
    src = tmp_path / f"src-{repo.replace('/', '_')}"
    manifest, config, layers = build_oci_layout(src, "v1", sizes, seed=seed)
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    skopeo("--policy", str(policy), "copy", "--quiet", "--preserve-digests",
           "--dest-tls-verify=false", "--dest-no-creds", f"oci:{src}:v1",
           f"docker://127.0.0.1:{stack.drayage.port}/{repo}:v1")
    dst = tmp_path / f"dst-{repo.replace('/', '_')}"
    skopeo("--policy", str(policy), "copy", "--quiet", "--preserve-digests",
           "--src-tls-verify=false", "--src-no-creds",
           f"docker://{stack.registry.host}/{repo}:v1", f"oci:{dst}:v1")
    index = json.loads((dst / "index.json").read_text())
    got_manifest_digest = index["manifests"][0]["digest"]
    assert got_manifest_digest == digest_of(manifest)
    for blob in [config] + layers:
        path = dst / "blobs" / "sha256" / blob.digest.split(":", 1)[1]
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(8 * MiB):
                h.update(chunk)
        assert "sha256:" + h.hexdigest() == blob.digest
        assert path.stat().st_size == blob.size
    return layers


def overlapping(records) -> bool:
    rs = sorted(records, key=lambda r: r.start)
    return any(b.start < a.end for a, b in zip(rs, rs[1:]))


def test_skopeo_push_small_layers(swift, drayage_factory, tmp_path):
    stack = Stack(swift, drayage_factory, tmp_path)
    try:
        layers = push_and_read_back(stack, tmp_path, "team/small", [1024, 5 * MiB + 1], seed=21)
        for layer in layers:
            assert stack.get_object(stack.link_key("team/small", layer.digest)) == \
                layer.digest.encode()
        stack.assert_clean()
        # The registry's catalog walk is not confused by drayage's objects under the root.
        st, _, body = stack.registry.get("/v2/_catalog")
        assert st == 200 and json.loads(body)["repositories"] == ["team/small"]
    finally:
        stack.stop()


def test_skopeo_push_300mib_parallel_parts_bounded_memory(swift, drayage_factory, tmp_path):
    # The cache is smaller than the layer, so the read-back into the cache is skipped and the
    # peak RSS measures the push path alone.
    stack = Stack(swift, drayage_factory, tmp_path, name="big",
                  drayage_extra={"cache": {"max_size": "128MiB"}})
    try:
        mark = swift.log_mark()
        layers = push_and_read_back(stack, tmp_path, "team/big", [300 * MiB], seed=22)
        big = layers[0]
        recs = swift.s3_requests(mark)
        parts = [r for r in recs if r.method == "PUT" and "partNumber=" in r.query
                 and r.bytes_in > 0]
        assert len(parts) >= 300 // 5, f"{len(parts)} UploadPart requests"
        assert overlapping(parts), "UploadPart requests never overlapped"
        copies = [r for r in recs if r.method == "PUT" and "partNumber=" in r.query
                  and r.bytes_in == 0]
        assert copies, "the blob was not placed with UploadPartCopy"
        peak = peak_rss_kib(stack.drayage.proc.pid) * 1024
        budget = (CONCURRENCY + 2) * CHUNK + 64 * MiB
        print(f"peak RSS {peak / MiB:.1f} MiB, budget {budget / MiB:.0f} MiB")
        assert peak < budget
        assert stack.get_object(stack.link_key("team/big", big.digest)) == big.digest.encode()
        stack.assert_clean()
    finally:
        stack.stop()


def test_push_through_faults(swift, drayage_factory, tmp_path):
    proxy = FaultProxy("127.0.0.1", swift.port).start()
    try:
        proxy.set_rules([
            Rule("reset_request", match="partNumber=", times=2, after=MiB),
            Rule("slowdown", share=0.2),
        ])
        stack = Stack(swift, drayage_factory, tmp_path, name="faulty",
                      s3_endpoint=proxy.endpoint)
        try:
            push_and_read_back(stack, tmp_path, "team/faulty", [2048, 17 * MiB], seed=23)
            assert proxy.stats["reset_request"] == 2
            assert proxy.stats["slowdown"] > 0
            stack.assert_clean()
        finally:
            stack.stop()
    finally:
        proxy.stop()


def test_leftover_uploads_aborted_at_startup(swift, drayage_bin, drayage_factory, tmp_path):
    stack = Stack(swift, drayage_factory, tmp_path, name="crash")
    try:
        # What a crashed node (this one: same host, same port) left behind.
        cfg = {k: v for k, v in stack.drayage.config.items() if k not in ("http", "cache")}
        d = Drayage(drayage_bin, tmp_path / "crash-restart", cfg)
        node = f"{socket.gethostname()}-{d.port}"
        prefix = f"{stack.root}/_drayage/uploads/{node}/"
        up = stack.s3.create_multipart_upload(Bucket=swift.bucket, Key=prefix + "aaaa/data")
        stack.s3.put_object(Bucket=swift.bucket, Key=prefix + "bbbb/data", Body=b"half")
        # Another node's fresh upload is left alone.
        other = f"{stack.root}/_drayage/uploads/elsewhere-1/cccc/data"
        up2 = stack.s3.create_multipart_upload(Bucket=swift.bucket, Key=other)
        assert len(stack.multipart_uploads()) == 2
        d.start()
        try:
            deadline = time.monotonic() + 20
            while True:
                ups = stack.multipart_uploads()
                objs = stack.temp_objects()
                if ups == [(other, up2["UploadId"])] and objs == []:
                    break
                assert time.monotonic() < deadline, f"left: {ups} {objs}"
                time.sleep(0.2)
            assert up["UploadId"] not in [u for _, u in ups]
        finally:
            d.stop()
            stack.s3.abort_multipart_upload(Bucket=swift.bucket, Key=other,
                                            UploadId=up2["UploadId"])
    finally:
        stack.stop()


def test_idle_session_expires(swift, drayage_factory, tmp_path):
    stack = Stack(swift, drayage_factory, tmp_path, name="ttl",
                  drayage_extra={"uploads": {"session_ttl": "2s"}})
    try:
        r = requests.post(f"{stack.url}/v2/idle/blobs/uploads/", timeout=10)
        loc = r.headers["Location"]
        assert requests.patch(f"{stack.url}{loc}", data=data(11 * MiB, 24),
                              timeout=60).status_code == 202
        # The parts are in S3 while the session lives (the upload is created asynchronously).
        deadline = time.monotonic() + 5
        while not stack.multipart_uploads():
            assert time.monotonic() < deadline, "no multipart upload while the session lives"
            time.sleep(0.05)
        deadline = time.monotonic() + 30
        while requests.get(f"{stack.url}{loc}", timeout=10).status_code != 404:
            assert time.monotonic() < deadline, "the session never expired"
            time.sleep(0.5)
        stack.assert_clean(timeout=20)
        assert stack.metric("drayage_push_sessions_expired_total") >= 1
    finally:
        stack.stop()
