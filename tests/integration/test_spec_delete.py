"""Deletion through drayage, and the repository proof on open mirrors (issue 15, items 2, 3, 5),
against the real docker-registry storing in Swift s3api (its config has storage.delete.enabled,
harness/registry.py), with drayage reading the same bucket:

- a blob DELETE the registry accepted (202) ends the repository's link in drayage: the blob is no
  longer served under that name, on the main loop nor on a hit worker, stays served under another
  repository that links it, and leaves the cache when the last repository's link goes;
- a manifest DELETE by digest ends its tag and digest records (also with the upstream down and
  after a restart: nothing stale is served);
- a registry that refuses deletion (405) is passed through and nothing changes;
- DELETE by tag is answered 202 or 405 UNSUPPORTED, whatever the registry says otherwise;
- an open mirror (no auth) serves a cached blob only under a repository that holds it.
"""
import subprocess
import uuid

import pytest
import requests

from harness.registry import ALL_MANIFESTS, KiB, Registry, s3_storage
from harness.swift import swift  # noqa: F401 (session fixture)


def drayage_s3_block(swift, root: str) -> dict:  # noqa: F811
    return {"accesskey": swift.access_key, "secretkey": swift.secret_key, "region": swift.region,
            "regionendpoint": swift.endpoint, "bucket": swift.bucket, "secure": False,
            "chunksize": "5MiB", "rootdirectory": root}


def start_pair(swift, tmp_path, drayage_factory, workers=0, delete=True, name="d"):  # noqa: F811
    root = f"/del-{uuid.uuid4().hex[:8]}"
    extra = {"storage": {"redirect": {"disable": True}}}
    if not delete:
        extra["storage"]["delete"] = {"enabled": False}
    reg = Registry(tmp_path / f"reg-{name}", s3=s3_storage(swift, root), extra=extra).start()
    d = drayage_factory({"upstream": {"url": reg.url},
                         "storage": {"s3": drayage_s3_block(swift, root)},
                         "http": {"workers": workers}}, name=name)
    return reg, d


def error_code(r) -> str:
    return r.json()["errors"][0]["code"]


def cached_digests(drayage_bin, d) -> set:
    p = subprocess.run([str(drayage_bin), "cache", "ls", "--config", str(d.config_path)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return {w for w in p.stdout.split() if w.startswith("sha256:")}


def test_deleted_blob_is_gone_under_its_repository_and_leaves_with_its_last_link(
        swift, tmp_path, drayage_factory, drayage_bin):  # noqa: F811
    reg, d = start_pair(swift, tmp_path, drayage_factory)
    try:
        a = reg.push_image("del/a", "v1", [KiB + 1], seed=51)
        reg.push_image("del/b", "v1", [KiB + 1], seed=51)  # the same layer in a second repository
        layer = a.layers[0]
        for repo in ("del/a", "del/b"):
            r = requests.get(f"{d.url}/v2/{repo}/blobs/{layer.digest}", timeout=60)
            assert r.status_code == 200 and r.content == layer.path.read_bytes()
        assert layer.digest in cached_digests(drayage_bin, d)

        r = requests.delete(f"{d.url}/v2/del/a/blobs/{layer.digest}", timeout=60)
        assert r.status_code == 202, r.text
        # Gone under del/a, as at the registry; the regression: it was served from the cache.
        for method in ("GET", "HEAD"):
            r = requests.request(method, f"{d.url}/v2/del/a/blobs/{layer.digest}", timeout=60)
            assert r.status_code == 404, (method, r.status_code)
        r = requests.get(f"{d.url}/v2/del/a/blobs/{layer.digest}", timeout=60)
        assert error_code(r) == "BLOB_UNKNOWN"
        # Still linked in del/b: served from the cache there, and still cached.
        hits = d.metric("drayage_registry_responses_total", 'outcome="hit"')
        r = requests.get(f"{d.url}/v2/del/b/blobs/{layer.digest}", timeout=60)
        assert r.status_code == 200 and r.content == layer.path.read_bytes()
        assert d.metric("drayage_registry_responses_total", 'outcome="hit"') == hits + 1
        assert layer.digest in cached_digests(drayage_bin, d)

        r = requests.delete(f"{d.url}/v2/del/b/blobs/{layer.digest}", timeout=60)
        assert r.status_code == 202, r.text
        assert layer.digest not in cached_digests(drayage_bin, d)
        r = requests.get(f"{d.url}/v2/del/b/blobs/{layer.digest}", timeout=60)
        assert r.status_code == 404 and error_code(r) == "BLOB_UNKNOWN"
    finally:
        reg.stop()


def test_deleted_blob_is_not_served_by_hit_workers(swift, tmp_path, drayage_factory):  # noqa: F811
    reg, d = start_pair(swift, tmp_path, drayage_factory, workers=2)
    try:
        image = reg.push_image("del/w", "v1", [3 * KiB], seed=52)
        url = f"{d.url}/v2/del/w/blobs/{image.layers[0].digest}"
        assert requests.get(url, timeout=60).status_code == 200  # filled and linked
        # New connections until one lands on a worker and is served there (2/3 of them do).
        for _ in range(200):
            if d.metric("drayage_http_worker_hits_total") > 0:
                break
            with requests.Session() as s:
                assert s.get(url, timeout=60).status_code == 200
        served = d.metric("drayage_http_worker_hits_total")
        assert served > 0

        r = requests.delete(url, timeout=60)
        assert r.status_code == 202, r.text
        for _ in range(24):  # over three loops: 2^-24 that none lands on a worker
            with requests.Session() as s:
                for method in ("GET", "HEAD"):
                    r = s.request(method, url, timeout=60)
                    assert r.status_code == 404, (method, r.status_code)
        assert d.metric("drayage_http_worker_hits_total") == served
    finally:
        reg.stop()


def test_manifest_delete_by_digest_ends_its_tag_and_digest_records(swift, tmp_path,  # noqa: F811
                                                                   drayage_factory):
    reg, d = start_pair(swift, tmp_path, drayage_factory)
    try:
        image = reg.push_image("del/m", "v1", [KiB], seed=53)
        by_tag = f"{d.url}/v2/del/m/manifests/v1"
        by_digest = f"{d.url}/v2/del/m/manifests/{image.manifest_digest}"
        accept = {"Accept": ALL_MANIFESTS}
        for url in (by_tag, by_digest):
            r = requests.get(url, headers=accept, timeout=60)
            assert r.status_code == 200 and r.content == image.manifest

        r = requests.delete(by_digest, timeout=60)
        assert r.status_code == 202, r.text
        for url in (by_tag, by_digest):
            r = requests.get(url, headers=accept, timeout=60)
            assert r.status_code == 404 and error_code(r) == "MANIFEST_UNKNOWN", (url, r.text)

        # The registry down: the records are gone, so nothing stale is served either; nor after
        # a restart, which reads the tag records back from the cache.
        reg.stop()
        for restart in (False, True):
            if restart:
                d.stop()
                d.start()
            for url in (by_tag, by_digest):
                r = requests.get(url, headers=accept, timeout=60)
                assert r.status_code != 200 and r.content != image.manifest, (restart, url)
    finally:
        reg.stop()


def test_a_refused_deletion_passes_through_and_changes_nothing(swift, tmp_path,  # noqa: F811
                                                               drayage_factory):
    reg, d = start_pair(swift, tmp_path, drayage_factory, delete=False)
    try:
        image = reg.push_image("del/r", "v1", [KiB], seed=54)
        layer = image.layers[0]
        blob = f"{d.url}/v2/del/r/blobs/{layer.digest}"
        manifest = f"{d.url}/v2/del/r/manifests/{image.manifest_digest}"
        accept = {"Accept": ALL_MANIFESTS}
        assert requests.get(blob, timeout=60).status_code == 200
        assert requests.get(manifest, headers=accept, timeout=60).status_code == 200
        direct = requests.delete(f"{reg.url}/v2/del/r/blobs/{layer.digest}", timeout=60)
        for url in (blob, manifest):
            r = requests.delete(url, timeout=60)
            assert r.status_code == direct.status_code == 405, (url, r.text)
            assert error_code(r) == error_code(direct)
        r = requests.get(blob, timeout=60)
        assert r.status_code == 200 and r.content == layer.path.read_bytes()
        r = requests.get(manifest, headers=accept, timeout=60)
        assert r.status_code == 200 and r.content == image.manifest
    finally:
        reg.stop()


@pytest.mark.parametrize("delete", [True, False])
def test_delete_by_tag_is_202_or_405_unsupported(swift, tmp_path, drayage_factory,  # noqa: F811
                                                 delete):
    """The spec allows 202, or 400/405 where deletion by tag is not possible, nothing else. The
    registry's own answer is recorded beside drayage's: where it differs, it is on purpose."""
    reg, d = start_pair(swift, tmp_path, drayage_factory, delete=delete, name=f"tag-{delete}")
    try:
        reg.push_image("del/t", "v1", [KiB], seed=55)
        reg.push_image("del/t", "v2", [KiB], seed=56)
        accept = {"Accept": ALL_MANIFESTS}
        assert requests.get(f"{d.url}/v2/del/t/manifests/v1", headers=accept,
                            timeout=60).status_code == 200
        direct = requests.delete(f"{reg.url}/v2/del/t/manifests/v2", timeout=60)
        r = requests.delete(f"{d.url}/v2/del/t/manifests/v1", timeout=60)
        print(f"DELETE by tag, storage.delete.enabled={delete}: registry {direct.status_code} "
              f"{direct.text.strip()} / drayage {r.status_code} {r.text.strip()}")
        assert r.status_code in (202, 405), r.text
        if delete:  # docker-registry 2.8 reads the tag as a digest: 400 DIGEST_INVALID
            assert (direct.status_code, error_code(direct)) == (400, "DIGEST_INVALID")
        if r.status_code == 405:
            assert error_code(r) == "UNSUPPORTED"
            r = requests.get(f"{d.url}/v2/del/t/manifests/v1", headers=accept, timeout=60)
            assert r.status_code == 200  # nothing was deleted
        else:
            r = requests.get(f"{d.url}/v2/del/t/manifests/v1", headers=accept, timeout=60)
            assert r.status_code == 404 and error_code(r) == "MANIFEST_UNKNOWN"
    finally:
        reg.stop()


@pytest.mark.parametrize("workers", [0, 2])
def test_open_mirror_serves_a_blob_only_under_a_repository_that_holds_it(
        tmp_path, drayage_factory, workers):
    """No auth: /v2/<other>/blobs/<d> of a cached blob is a 404, as at the registry. The proof
    of a repository that does hold it costs one HEAD upstream, once."""
    reg = Registry(tmp_path / "reg").start()
    try:
        image = reg.push_image("open/a", "v1", [2 * KiB], seed=57)
        reg.push_image("open/c", "v1", [2 * KiB], seed=57)  # also holds the layer
        d = drayage_factory({"upstream": {"url": reg.url}, "http": {"workers": workers}},
                            name=f"open-{workers}")
        layer = image.layers[0]
        body = layer.path.read_bytes()
        assert requests.get(f"{d.url}/v2/open/a/blobs/{layer.digest}", timeout=60).content == body
        for _ in range(8):
            with requests.Session() as s:
                for method in ("GET", "HEAD"):
                    r = s.request(method, f"{d.url}/v2/open/other/blobs/{layer.digest}",
                                  timeout=60)
                    assert r.status_code == 404, (method, r.status_code)
                r = s.get(f"{d.url}/v2/open/other/blobs/{layer.digest}", timeout=60)
                assert error_code(r) == "BLOB_UNKNOWN"
                r = s.get(f"{d.url}/v2/open/a/blobs/{layer.digest}", timeout=60)
                assert r.status_code == 200 and r.content == body
        # open/c holds it too: proven with one HEAD, remembered, then served from the cache.
        reg.sync()
        mark = len(reg.requests())
        for _ in range(6):
            with requests.Session() as s:
                r = s.get(f"{d.url}/v2/open/c/blobs/{layer.digest}", timeout=60)
                assert r.status_code == 200 and r.content == body
        reg.sync()
        seen = [(q["method"], q["path"]) for q in reg.requests()[mark:]
                if "/blobs/" in q["path"]]
        assert seen == [("HEAD", f"/v2/open/c/blobs/{layer.digest}")], seen
    finally:
        reg.stop()
