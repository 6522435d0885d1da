"""An upstream, or a repository writer, that means harm: what drayage does with what they send.

- A manifest naming a digest of another repository (a foreign layer, which docker-registry accepts
  with `validation.manifests.urls.allow`) does not make that blob readable under its repository.
"""
import hashlib
import json
import time
import urllib.request

import pytest
import requests

from harness.drayage import Drayage
from harness.registry import ALL_MANIFESTS, DOCKER_MANIFEST, KiB, MiB, Registry
from test_auth_pull import auth_config

FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
OCI_NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


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
