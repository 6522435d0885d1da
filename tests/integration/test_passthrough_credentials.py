"""Writes drayage forwards to the registry behind it (src/registry/forwarder.cpp) when drayage is
its own auth realm: the client's credentials for drayage (alice's password, a drayage token)
never reach the registry, nor do cookies or Proxy-Authorization; the registry sees drayage's own
upstream credentials (a token of its token service for the push scope), or none.

The registry is a real docker-registry; a recording proxy (harness/faultproxy.py) in front of it
shows every request head drayage sent.
"""
import base64
import json

import jwt
import pytest
import requests

from harness.drayage import Drayage
from harness.faultproxy import FaultProxy
from harness.registry import KiB, OCI_MANIFEST, Registry
from harness.tokenserver import TokenServer
from test_auth_pull import SERVICE, auth_config

RULES = [{"repositories": ["team/**"], "pull": ["alice"], "push": ["alice"]}]
ALICE = ("alice", "pw")
CLIENT_SECRETS = {"cookie": "session=client-cookie-secret",
                  "proxy-authorization": "Basic " + base64.b64encode(b"proxy:secret").decode()}


def start(bin_path, workdir, registry: Registry, upstream_creds: dict | None = None):
    proxy = FaultProxy("127.0.0.1", registry.port).start()
    upstream = {"url": proxy.endpoint, "connect_timeout": "2s", "response_timeout": "10s"}
    upstream.update(upstream_creds or {})
    d = Drayage(bin_path, workdir, {"upstream": upstream,
                                    "auth": auth_config(workdir / "auth", RULES)}).start()
    return proxy, d


def drayage_token(d: Drayage) -> str:
    r = requests.get(f"{d.url}/auth/token", auth=ALICE, timeout=30,
                     params={"service": SERVICE, "scope": "repository:team/app:pull,push"})
    assert r.status_code == 200, r.text
    return r.json()["token"]


def put_manifest(d: Drayage, tag: str, manifest: bytes, authorization: str):
    return requests.put(f"{d.url}/v2/team/app/manifests/{tag}", data=manifest, timeout=30,
                        headers={"Content-Type": OCI_MANIFEST, "Authorization": authorization,
                                 **CLIENT_SECRETS})


def sent_headers(proxy: FaultProxy, method: str) -> list:
    """Per request of `method` the proxy saw: its headers, names lower-cased."""
    out = []
    for head in proxy.request_heads():
        lines = head.decode("latin-1").split("\r\n")
        if not lines[0].startswith(method + " "):
            continue
        out.append({k.strip().lower(): v.strip()
                    for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)})
    return out


def basic(user_pw) -> str:
    return "Basic " + base64.b64encode(":".join(user_pw).encode()).decode()


def assert_no_client_secrets(proxy: FaultProxy, token: str | None = None):
    everything = b"".join(proxy.request_heads()).decode("latin-1")
    for secret in [basic(ALICE), token, *CLIENT_SECRETS.values()]:
        if secret:
            assert secret.split(" ")[-1] not in everything


def test_open_registry_sees_no_credentials(build_dir, tmp_path):
    reg = Registry(tmp_path / "reg").start()
    proxy = d = None
    try:
        image = reg.push_image("team/app", "v1", [2 * KiB], seed=61)
        proxy, d = start(build_dir / "src" / "drayage", tmp_path / "d", reg)
        token = drayage_token(d)
        assert put_manifest(d, "v2", image.manifest, basic(ALICE)).status_code == 201
        assert put_manifest(d, "v3", image.manifest, "Bearer " + token).status_code == 201
        puts = sent_headers(proxy, "PUT")
        assert len(puts) == 2
        for h in puts:
            assert "authorization" not in h and "cookie" not in h
            assert "proxy-authorization" not in h
        assert_no_client_secrets(proxy, token)
        for tag in ("v2", "v3"):
            status, _, body = reg.get(f"/v2/team/app/manifests/{tag}",
                                      headers={"Accept": OCI_MANIFEST})
            assert status == 200 and body == image.manifest
    finally:
        for p in (d, proxy, reg):
            if p is not None:
                p.stop()


@pytest.fixture
def token_registry(tmp_path):
    tokens = TokenServer(tmp_path / "tokens", users={
        "mirror": {"password": "mpw", "access": {"*": ["pull", "push"]}},
        "alice": {"password": "pw", "access": {"*": ["pull", "push"]}}})
    tokens.start()
    reg = Registry(tmp_path / "reg", token=tokens).start()
    reg.image = reg.push_image("team/app", "v1", [2 * KiB], seed=62, creds="mirror:mpw")
    yield tokens, reg
    reg.stop()
    tokens.stop()


def test_token_registry_sees_drayage_credentials(build_dir, tmp_path, token_registry):
    tokens, reg = token_registry
    mark = len(tokens.token_requests())
    proxy, d = start(build_dir / "src" / "drayage", tmp_path / "d", reg,
                     {"username": "mirror", "password": "mpw"})
    try:
        token = drayage_token(d)
        # alice has the same name and password upstream: a forwarded Basic would work there too.
        assert put_manifest(d, "v2", reg.image.manifest, basic(ALICE)).status_code == 201
        assert put_manifest(d, "v3", reg.image.manifest, "Bearer " + token).status_code == 201
        puts = sent_headers(proxy, "PUT")
        assert len(puts) == 2
        for h in puts:
            assert h["authorization"].startswith("Bearer ")
            claims = jwt.decode(h["authorization"][7:], options={"verify_signature": False})
            assert claims["sub"] == "mirror" and claims["iss"] == tokens.issuer
            assert {"type": "repository", "name": "team/app",
                    "actions": ["pull", "push"]} in claims["access"]
            assert "cookie" not in h and "proxy-authorization" not in h
        assert_no_client_secrets(proxy, token)
        # drayage asked its token service once, as itself, for the push scope; the second PUT
        # reused the token.
        asked = tokens.token_requests()[mark:]
        assert [(r["user"], r["scopes"]) for r in asked] == [
            ("mirror", ["repository:team/app:pull,push"])]
    finally:
        d.stop()
        proxy.stop()


def test_registry_refusing_drayage_is_denied_without_its_challenge(build_dir, tmp_path,
                                                                  token_registry):
    """No upstream credentials configured: the registry refuses drayage's anonymous token. The
    client gets 403, not the registry's challenge (it would send its drayage password there)."""
    tokens, reg = token_registry
    mark = len(tokens.token_requests())
    proxy, d = start(build_dir / "src" / "drayage", tmp_path / "d", reg)
    try:
        r = put_manifest(d, "v2", reg.image.manifest, basic(ALICE))
        assert r.status_code == 403, r.text
        assert r.json()["errors"][0]["code"] == "DENIED"
        assert tokens.realm not in json.dumps(dict(r.headers))
        assert {r["user"] for r in tokens.token_requests()[mark:]} == {""}
        assert_no_client_secrets(proxy)
    finally:
        d.stop()
        proxy.stop()
