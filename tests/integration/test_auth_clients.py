"""Real clients against drayage as its own auth realm: skopeo with an auth.json entry for
drayage, containerd with drayage as the `server` (no fallback can hide a deny) and user
credentials, dockerd with drayage as registry mirror and its Docker Hub credentials (Hub itself is
unreachable here). Each is allowed what the rules give it and denied the rest.
"""
import base64
import json

import pytest
import requests

from harness.clients import Containerd, Dockerd, dir_blobs, skopeo_pull
from harness.drayage import Drayage
from harness.registry import ALL_MANIFESTS, KiB, MiB, Registry
from harness.tokenserver import TokenServer
from test_auth_pull import auth_config

RULES = [
    {"repositories": ["public/**"], "pull": ["*"]},
    {"repositories": ["private/**"], "pull": ["alice"]},
]


class Setup:
    """Token server, token-auth upstream with a private and a public image, drayage."""

    def __init__(self, build_dir, wd):
        self.tokens = TokenServer(wd / "tokens", users={
            "mirror": {"password": "mpw", "access": {"*": ["pull", "push"]}}})
        self.tokens.start()
        self.reg = Registry(wd / "reg", token=self.tokens).start()
        # Layer sizes that are valid tars (containerd and dockerd unpack).
        self.reg.private = self.reg.push_image("private/app", "v1", [2 * KiB, 2 * MiB], seed=31,
                                               creds="mirror:mpw")
        self.reg.public = self.reg.push_image("public/app", "v1", [4 * KiB], seed=32,
                                              creds="mirror:mpw")
        self.d = Drayage(build_dir / "src" / "drayage", wd / "d", {
            "upstream": {"url": self.reg.url, "username": "mirror", "password": "mpw",
                         "connect_timeout": "1s", "response_timeout": "3s"},
            "auth": auth_config(wd / "d", RULES),
        }).start()

    def stop(self):
        self.d.stop()
        self.reg.stop()
        self.tokens.stop()


@pytest.fixture(scope="module")
def setup(build_dir, tmp_path_factory):
    s = Setup(build_dir, tmp_path_factory.mktemp("auth-clients"))
    yield s.reg, s.d
    s.stop()


def auth_json(path, host, user, pw):
    path.write_text(json.dumps({"auths": {host: {
        "auth": base64.b64encode(f"{user}:{pw}".encode()).decode()}}}))
    return path


def test_skopeo_with_an_auth_json_entry_for_drayage(setup, tmp_path):
    reg, d = setup
    host = f"127.0.0.1:{d.port}"
    alice = auth_json(tmp_path / "alice.json", host, "alice", "pw")
    r = skopeo_pull(tmp_path / "s1", host, "private/app:v1", tmp_path / "p1", auth_file=alice)
    assert r.returncode == 0, r.stderr + d.log()[-2000:]
    blobs = dir_blobs(tmp_path / "p1")
    assert all(layer.digest in blobs for layer in reg.private.layers)

    bob = auth_json(tmp_path / "bob.json", host, "bob", "bobpw")
    for name, creds in [("bob", bob), ("anonymous", None)]:
        r = skopeo_pull(tmp_path / f"s-{name}", host, "private/app:v1", tmp_path / f"p-{name}",
                        auth_file=creds)
        assert r.returncode != 0, name
        assert not dir_blobs(tmp_path / f"p-{name}") if (tmp_path / f"p-{name}").exists() else True
    # Public content: anonymous is fine.
    r = skopeo_pull(tmp_path / "s2", host, "public/app:v1", tmp_path / "p2")
    assert r.returncode == 0, r.stderr


def ctr_pull(c: Containerd, d: Drayage, ref: str, user: str | None = None):
    """ctr pull with drayage as the server and the only host. (Containerd.pull(as_server=True)
    writes a hosts.toml with no [host] table, which containerd 1.6 rejects ("invalid `host`
    tree") and then falls back to registry-1.docker.io.)"""
    hosts = c.workdir / "hosts-only-drayage" / "docker.io"
    hosts.mkdir(parents=True, exist_ok=True)
    (hosts / "hosts.toml").write_text(f'server = "{d.url}"\n'
                                      f'[host."{d.url}"]\n'
                                      '  capabilities = ["pull", "resolve"]\n')
    args = ["image", "pull", "--hosts-dir", str(hosts.parent)]
    if user:
        args += ["--user", user]
    r = c.ctr(*args, ref)
    assert "registry-1.docker.io" not in r.stdout + r.stderr, "fell back to Docker Hub"
    return r


def test_containerd_with_drayage_as_server(setup, tmp_path):
    reg, d = setup
    with Containerd(tmp_path / "ctrd") as c:
        r = ctr_pull(c, d, "docker.io/private/app:v1", user="bob:bobpw")
        assert r.returncode != 0, r.stdout
        r = ctr_pull(c, d, "docker.io/private/app:v1", user="alice:wrong")
        assert r.returncode != 0, r.stdout
        r = ctr_pull(c, d, "docker.io/private/app:v1")
        assert r.returncode != 0, r.stdout
        r = ctr_pull(c, d, "docker.io/private/app:v1", user="alice:pw")
        assert r.returncode == 0, r.stdout + r.stderr + d.log()[-2000:]
        assert c.image_digest("docker.io/private/app:v1") == reg.private.manifest_digest
        r = ctr_pull(c, d, "docker.io/public/app:v1")
        assert r.returncode == 0, r.stdout + r.stderr


def test_dockerd_with_the_upstream_unreachable(build_dir, tmp_path):
    """alice warms drayage; then the upstream (and Docker Hub, always here) is unreachable. The
    daemon sends its Docker Hub credentials to the realm drayage's challenge names: with alice's
    it pulls the private image from the cache; without, it gets nothing."""
    s = Setup(build_dir, tmp_path / "setup")
    try:
        reg, d = s.reg, s.d
        for path in ["/v2/private/app/manifests/v1", "/v2/public/app/manifests/v1"]:
            assert requests.get(d.url + path, auth=("alice", "pw"),
                                headers={"Accept": ALL_MANIFESTS}).status_code == 200
        for b in reg.private.layers + [reg.private.config]:
            assert requests.get(f"{d.url}/v2/private/app/blobs/{b.digest}",
                                auth=("alice", "pw")).status_code == 200
        for b in reg.public.layers + [reg.public.config]:
            assert requests.get(f"{d.url}/v2/public/app/blobs/{b.digest}").status_code == 200
        reg.stop()
        s.tokens.stop()
        with Containerd(tmp_path / "ctrd") as c, Dockerd(tmp_path / "dockerd", c, d.url) as dk:
            r = dk.pull("public/app:v1")
            assert r.returncode == 0, r.stdout + r.stderr + dk.log() + d.log()[-2000:]
            r = dk.pull("private/app:v1")
            assert r.returncode != 0
            cfg = tmp_path / "dockerd" / ".docker"
            cfg.mkdir(parents=True, exist_ok=True)
            auth_json(cfg / "config.json", "https://index.docker.io/v1/", "bob", "bobpw")
            r = dk.pull("private/app:v1")
            assert r.returncode != 0
            auth_json(cfg / "config.json", "https://index.docker.io/v1/", "alice", "pw")
            r = dk.pull("private/app:v1")
            assert r.returncode == 0, r.stdout + r.stderr + dk.log() + d.log()[-2000:]
            assert dk.repo_digest("private/app:v1") == reg.private.manifest_digest
    finally:
        s.stop()
