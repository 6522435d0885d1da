"""The repository/digest proof with the bucket as a source: a docker-registry (`auth: htpasswd`)
stores in Swift s3api; drayage reads blobs straight from the bucket. A private digest asked under
another repository gets 404 although the bytes sit in the bucket; a digest the bucket's layer link
ties to the repository is served without any manifest having been fetched.
"""
import hashlib
import uuid

import requests

from harness.drayage import Drayage
from harness.registry import KiB, MiB, Registry, s3_storage
from harness.swift import swift  # noqa: F401 (session fixture)
from test_auth_pull import auth_config
from test_pull_s3 import drayage_s3_block

RULES = [
    {"repositories": ["public/**"], "pull": ["*"]},
    {"repositories": ["private/**"], "pull": ["alice"]},
    {"repositories": ["bob/**"], "pull": ["bob"], "push": ["bob"]},
    {"repositories": ["alice/**"], "pull": ["alice"], "push": ["alice"]},
]


def test_cross_repository_digest_only_in_the_bucket(swift, tmp_path, build_dir):  # noqa: F811
    root = f"/auth-{uuid.uuid4().hex[:8]}"
    reg = Registry(tmp_path / "reg", s3=s3_storage(swift, root), htpasswd={"mirror": "mpw"},
                   extra={"storage": {"redirect": {"disable": True}}}).start()
    d = None
    try:
        private = reg.push_image("private/app", "v1", [KiB, 3 * MiB], seed=41, creds="mirror:mpw")
        public = reg.push_image("public/x", "v1", [2 * KiB], seed=42, creds="mirror:mpw")
        d = Drayage(build_dir / "src" / "drayage", tmp_path / "d", {
            "upstream": {"url": reg.url, "username": "mirror", "password": "mpw",
                         "connect_timeout": "2s", "response_timeout": "5s"},
            "storage": {"s3": drayage_s3_block(swift, root)},
            "auth": auth_config(tmp_path / "d", RULES),
        }).start()
        layer = private.layers[1]
        cross = f"{d.url}/v2/public/x/blobs/{layer.digest}"

        def denied_everywhere():
            for auth in [("alice", "pw"), ("bob", "bobpw"), None]:
                for method in ("GET", "HEAD"):
                    r = requests.request(method, cross, auth=auth)
                    assert r.status_code == 404, (auth, method, r.status_code, d.log()[-1500:])
                    assert len(r.content) < 1000
                r = requests.get(cross, auth=auth, headers={"Range": "bytes=0-9"})
                assert r.status_code == 404

        denied_everywhere()  # nothing cached locally: the bytes are only in the bucket
        # alice under the right name: proven by the bucket's layer link, no manifest fetched.
        r = requests.get(f"{d.url}/v2/private/app/blobs/{layer.digest}", auth=("alice", "pw"))
        assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == layer.digest[7:]
        assert [a["outcome"] for a in d.access(f"/v2/private/app/blobs/{layer.digest}")] == \
            ["miss:s3"]
        denied_everywhere()  # now cached locally too
        # bob may read public/x content, not the private layer under private/app.
        assert requests.get(f"{d.url}/v2/public/x/blobs/{public.layers[0].digest}",
                            auth=("bob", "bobpw")).status_code == 200
        assert requests.get(f"{d.url}/v2/private/app/blobs/{layer.digest}",
                            auth=("bob", "bobpw")).status_code == 401
        # Cross-repository mounts: only from a repository the client may read, of a digest that
        # belongs to it; a digest that does not is no mount but an upload session (the spec's
        # 202), and nothing is linked.
        def mount(auth, into, source):
            return requests.post(f"{d.url}/v2/{into}/blobs/uploads/",
                                 params={"mount": layer.digest, "from": source}, auth=auth,
                                 allow_redirects=False)
        assert mount(("bob", "bobpw"), "bob/x", "private/app").status_code == 401
        assert mount(("bob", "bobpw"), "bob/x", "public/x").status_code == 202
        assert mount(("bob", "bobpw"), "private/app", "private/app").status_code == 401
        assert requests.get(f"{d.url}/v2/bob/x/blobs/{layer.digest}",
                            auth=("bob", "bobpw")).status_code == 404
        r = mount(("alice", "pw"), "alice/x", "private/app")
        assert r.status_code == 201, (r.status_code, r.text, d.log()[-1500:])
        r = requests.get(f"{d.url}/v2/alice/x/blobs/{layer.digest}", auth=("alice", "pw"))
        assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == layer.digest[7:]
        # With the registry down, the cross-repository request still gets nothing.
        reg.stop()
        for auth in [("alice", "pw"), None]:
            r = requests.get(cross, auth=auth)
            assert r.status_code in (404, 503) and len(r.content) < 1000
    finally:
        if d:
            d.stop()
        reg.stop()
