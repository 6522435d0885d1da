"""Who may pull: drayage as its own auth realm in front of a token-auth upstream registry.

The upstream is docker-registry with `auth: token` (harness/tokenserver.py); drayage reaches it
with its own upstream credentials, which can read everything. drayage's own rules:
public/** for everyone, private/** for alice only. After alice warms the cache, nobody else gets
a byte of private content by any spelling, token, digest or timing.
"""
import base64
import concurrent.futures
import hashlib
import http.client
import json
import pathlib
import socket
import subprocess
import time

import jwt
import pytest
import requests

from harness.drayage import Drayage
from harness.registry import ALL_MANIFESTS, KiB, MiB, Registry
from harness.tokenserver import TokenServer

SERVICE = "drayage-auth-test"
KEY = "k" * 40  # auth.token.key: the test signs its own forged tokens with it


def htpasswd_file(path: pathlib.Path, users: dict) -> pathlib.Path:
    lines = [subprocess.run(["htpasswd", "-Bbn", "-C", "5", u, p], check=True, capture_output=True,
                            text=True).stdout.strip() for u, p in users.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def auth_config(workdir: pathlib.Path, rules: list) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    key = workdir / "token.key"
    key.write_text(KEY)
    return {
        "htpasswd": {"path": str(htpasswd_file(workdir / "htpasswd",
                                               {"alice": "pw", "bob": "bobpw"}))},
        "token": {"service": SERVICE, "key": str(key), "expiration": "5m"},
        "rules": rules,
    }


RULES = [
    {"repositories": ["public/**"], "pull": ["*"]},
    {"repositories": ["private/**"], "pull": ["alice"]},
]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    wd = tmp_path_factory.mktemp("auth-upstream")
    everything = {"*": ["pull", "push"], "catalog": ["*"]}
    tokens = TokenServer(wd / "tokens", users={"mirror": {"password": "mpw", "access": everything}})
    tokens.start()
    reg = Registry(wd / "reg", token=tokens).start()
    reg.private = reg.push_image("private/app", "v1", [3 * KiB, 40 * MiB], seed=11,
                                 creds="mirror:mpw")
    reg.public = reg.push_image("public/x", "v1", [2 * KiB], seed=12, creds="mirror:mpw")
    yield reg
    reg.stop()
    tokens.stop()


def start_drayage(bin_path, workdir, upstream, rules=RULES, cache=None) -> Drayage:
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = {
        "upstream": {"url": upstream.url, "username": "mirror", "password": "mpw",
                     "connect_timeout": "2s", "response_timeout": "10s"},
        "auth": auth_config(workdir, rules),
        # Hit workers beside the main loop: every test here also runs against their admission
        # (connections land on any of the four loops).
        "http": {"workers": 3},
    }
    if cache:
        cfg["cache"] = {"path": str(cache)}
    return Drayage(bin_path, workdir, cfg).start()


@pytest.fixture(scope="module")
def mirror(build_dir, tmp_path_factory, upstream):
    d = start_drayage(build_dir / "src" / "drayage", tmp_path_factory.mktemp("auth-drayage"),
                      upstream)
    # alice warms the cache: manifest by tag, every blob.
    s = requests.Session()
    s.auth = ("alice", "pw")
    r = s.get(f"{d.url}/v2/private/app/manifests/v1", headers={"Accept": ALL_MANIFESTS})
    assert r.status_code == 200, r.text + d.log()[-2000:]
    for b in upstream.private.layers + [upstream.private.config]:
        r = s.get(f"{d.url}/v2/private/app/blobs/{b.digest}")
        assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == b.digest[7:]
    yield d
    d.stop()


def basic(user, pw):
    return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()


def forge(**over):
    now = int(time.time())
    claims = {"iss": "drayage", "sub": "alice", "aud": SERVICE, "iat": now, "nbf": now,
              "exp": now + 300, "jti": "x", "drayage_typ": "access",
              "access": [{"type": "repository", "name": "private/app", "actions": ["pull"]}]}
    key = over.pop("key", KEY)
    claims.update(over)
    return jwt.encode(claims, key, algorithm="HS256")


def raw_get(port: int, target: str, headers: dict | None = None, method: str = "GET"):
    """A request with the target exactly as given (no client-side path normalisation)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.putrequest(method, target, skip_host=False, skip_accept_encoding=True)
    for k, v in (headers or {}).items():
        c.putheader(k, v)
    c.endheaders()
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, r.getheaders(), body


def private_targets(up):
    layer = up.private.layers[1]
    return [
        ("GET", "/v2/private/app/manifests/v1", {}),
        ("HEAD", "/v2/private/app/manifests/v1", {}),
        ("HEAD", f"/v2/private/app/manifests/{up.private.manifest_digest}", {}),
        ("GET", f"/v2/private/app/manifests/{up.private.manifest_digest}", {}),
        ("GET", f"/v2/private/app/blobs/{layer.digest}", {}),
        ("HEAD", f"/v2/private/app/blobs/{layer.digest}", {}),
        ("GET", f"/v2/private/app/blobs/{layer.digest}", {"Range": "bytes=0-99"}),
        ("GET", "/v2/private/app/tags/list", {}),
    ]


@pytest.mark.parametrize("who", ["anonymous", "bob", "wrong-password", "garbage"])
def test_others_get_nothing_private_after_alice_warmed_the_cache(mirror, upstream, who):
    auth = {"anonymous": None, "bob": basic("bob", "bobpw"), "wrong-password": basic("alice", "x"),
            "garbage": "Basic !!!"}[who]
    for method, target, extra in private_targets(upstream):
        headers = dict(extra)
        if auth:
            headers["Authorization"] = auth
        status, hdrs, body = raw_get(mirror.port, target, headers, method)
        assert status == 401, (who, target, status)
        challenge = dict((k.lower(), v) for k, v in hdrs)["www-authenticate"]
        assert challenge.startswith('Bearer realm="http://127.0.0.1:')
        assert f'service="{SERVICE}"' in challenge
        if who != "wrong-password" and who != "garbage":
            assert 'scope="repository:private/app:pull"' in challenge
        assert upstream.private.layers[1].digest not in body.decode(errors="replace")
        assert len(body) < 1000  # an error body, never content


def test_alice_reads_with_basic_and_with_a_token(mirror, upstream):
    layer = upstream.private.layers[0]
    r = requests.get(f"{mirror.url}/v2/private/app/blobs/{layer.digest}", auth=("alice", "pw"))
    assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == layer.digest[7:]

    # The token flow a client follows after the 401.
    r = requests.get(f"{mirror.url}/v2/private/app/blobs/{layer.digest}")
    assert r.status_code == 401
    t = requests.get(f"{mirror.url}/auth/token",
                     params={"service": SERVICE, "scope": "repository:private/app:pull,push"},
                     auth=("alice", "pw"))
    assert t.status_code == 200, t.text
    tok = t.json()["token"]
    claims = jwt.decode(tok, KEY, algorithms=["HS256"], audience=SERVICE, issuer="drayage")
    assert claims["sub"] == "alice"
    # push was asked for and not allowed by any rule: narrowed away.
    assert claims["access"] == [{"type": "repository", "name": "private/app", "actions": ["pull"]}]
    assert claims["exp"] - claims["iat"] == 300
    r = requests.get(f"{mirror.url}/v2/private/app/blobs/{layer.digest}",
                     headers={"Authorization": "Bearer " + tok})
    assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == layer.digest[7:]
    # /v2/ with the token: 200 (docker's ping).
    assert requests.get(f"{mirror.url}/v2/", headers={"Authorization": "Bearer " + tok}).status_code == 200
    assert requests.get(f"{mirror.url}/v2/").status_code == 401

    # bob's token for the same scope has no access at all, and does not open the blob.
    t = requests.get(f"{mirror.url}/auth/token",
                     params={"service": SERVICE, "scope": "repository:private/app:pull"},
                     auth=("bob", "bobpw"))
    assert t.status_code == 200
    assert jwt.decode(t.json()["token"], KEY, algorithms=["HS256"], audience=SERVICE)["access"] == []
    r = requests.get(f"{mirror.url}/v2/private/app/blobs/{layer.digest}",
                     headers={"Authorization": "Bearer " + t.json()["token"]})
    assert r.status_code == 401
    # Writes need push, which no rule gives alice.
    for method, path in [("POST", "/v2/private/app/blobs/uploads/"),
                         ("PUT", "/v2/private/app/manifests/v2"),
                         ("DELETE", f"/v2/private/app/blobs/{layer.digest}")]:
        assert requests.request(method, mirror.url + path, auth=("alice", "pw"),
                                data=b"{}").status_code == 401, (method, path)
    # A wrong password at the token endpoint: 401, no token.
    t = requests.get(f"{mirror.url}/auth/token",
                     params={"service": SERVICE, "scope": "repository:private/app:pull"},
                     auth=("alice", "nope"))
    assert t.status_code == 401 and "token" not in t.json()


def test_oauth2_password_and_refresh_grants(mirror, upstream):
    layer = upstream.private.layers[0]
    r = requests.post(f"{mirror.url}/auth/token",
                      data={"grant_type": "password", "username": "alice", "password": "pw",
                            "service": SERVICE, "client_id": "test",
                            "scope": "repository:private/app:pull"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["scope"] == "repository:private/app:pull"
    got = requests.get(f"{mirror.url}/v2/private/app/blobs/{layer.digest}",
                       headers={"Authorization": "Bearer " + body["access_token"]})
    assert got.status_code == 200
    # A refresh token is not an access token.
    assert requests.get(f"{mirror.url}/v2/private/app/blobs/{layer.digest}",
                        headers={"Authorization": "Bearer " + body["refresh_token"]}).status_code == 401
    r = requests.post(f"{mirror.url}/auth/token",
                      data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"],
                            "service": SERVICE, "client_id": "test",
                            "scope": "repository:private/app:pull"})
    assert r.status_code == 200, r.text
    assert requests.get(f"{mirror.url}/v2/private/app/blobs/{layer.digest}",
                        headers={"Authorization": "Bearer " + r.json()["access_token"]}).status_code == 200
    r = requests.post(f"{mirror.url}/auth/token",
                      data={"grant_type": "password", "username": "alice", "password": "bad",
                            "service": SERVICE, "client_id": "test"})
    assert r.status_code == 401 and "access_token" not in r.json()


B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def respelled(token: str) -> str:
    """The same token with the last character of its signature changed in an unused low bit:
    the same bytes, spelled another way."""
    return token[:-1] + B64URL[B64URL.index(token[-1]) ^ 1]


@pytest.mark.parametrize("case", ["good", "aud", "iss", "expired", "signature", "other-scope",
                                  "alg-none", "push-only", "padded", "respelled"])
def test_forged_tokens_are_rejected(mirror, upstream, case):
    layer = upstream.private.layers[0]
    now = int(time.time())
    tok = {
        "good": lambda: forge(),
        "aud": lambda: forge(aud="someone-else"),
        "iss": lambda: forge(iss="evil"),
        "expired": lambda: forge(exp=now - 60, iat=now - 400, nbf=now - 400),
        "signature": lambda: forge(key="x" * 40),
        "other-scope": lambda: forge(access=[{"type": "repository", "name": "public/x",
                                              "actions": ["pull"]}]),
        "alg-none": lambda: jwt.encode({"iss": "drayage", "sub": "alice", "aud": SERVICE,
                                        "exp": now + 300, "access": []}, None, algorithm="none"),
        "push-only": lambda: forge(access=[{"type": "repository", "name": "private/app",
                                            "actions": ["push"]}]),
        # A good token spelled another way: one token, one encoding.
        "padded": lambda: forge() + "==",
        "respelled": lambda: respelled(forge()),
    }[case]()
    r = requests.get(f"{mirror.url}/v2/private/app/blobs/{layer.digest}",
                     headers={"Authorization": "Bearer " + tok})
    assert r.status_code == (200 if case == "good" else 401), case
    # A token for bob naming private/app: the rules in force win over the token's claim.
    if case == "good":
        r = requests.get(f"{mirror.url}/v2/private/app/blobs/{layer.digest}",
                         headers={"Authorization": "Bearer " + forge(sub="bob")})
        assert r.status_code == 401


def test_cross_repository_digest_is_unknown(mirror, upstream):
    private_layer = upstream.private.layers[1]
    # alice may read both repositories; the private digest still does not belong to public/x.
    for auth in [("alice", "pw"), ("bob", "bobpw"), None]:
        for method in ("GET", "HEAD"):
            r = requests.request(method, f"{mirror.url}/v2/public/x/blobs/{private_layer.digest}",
                                 auth=auth)
            assert r.status_code == 404, (auth, method, r.status_code)
            assert len(r.content) < 1000
        r = requests.get(f"{mirror.url}/v2/public/x/manifests/{upstream.private.manifest_digest}",
                         auth=auth, headers={"Accept": ALL_MANIFESTS})
        assert r.status_code == 404, (auth, r.status_code)
    # Public content itself is readable by anyone with Basic, or anonymous via a token.
    pub = upstream.public.layers[0]
    assert requests.get(f"{mirror.url}/v2/public/x/blobs/{pub.digest}",
                        auth=("bob", "bobpw")).status_code == 200
    t = requests.get(f"{mirror.url}/auth/token",
                     params={"service": SERVICE, "scope": "repository:public/x:pull"}).json()["token"]
    r = requests.get(f"{mirror.url}/v2/public/x/blobs/{pub.digest}",
                     headers={"Authorization": "Bearer " + t})
    assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == pub.digest[7:]


@pytest.mark.parametrize("target", [
    "/v2/private%2Fapp/manifests/v1",
    "/v2/private%2fapp/manifests/v1",
    "/v2/public/../private/app/manifests/v1",
    "/v2/public/x/../../private/app/manifests/v1",
    "/v2/private//app/manifests/v1",
    "/v2//private/app/manifests/v1",
    "/v2/PRIVATE/app/manifests/v1",
    "/v2/Private/App/manifests/v1",
    "/v2/private/app/manifests/v1?ns=docker.io",
    "/v2/public/x/../../private/app/blobs/{layer}",
    "/v2/public/x/blobs/../../../private/app/blobs/{layer}",
    "/v2/./private/app/manifests/v1",
    "/v2/private/app/./manifests/v1",
    "/v2/public%2F..%2Fprivate/app/manifests/v1",
    "/v2/public/x/blobs/{layer}/../../../../private/app/blobs/{layer}",
])
def test_path_tricks_do_not_bypass_rules(mirror, upstream, target):
    layer = upstream.private.layers[1].digest
    target = target.replace("{layer}", layer)
    for auth in [None, basic("bob", "bobpw")]:
        status, _, body = raw_get(mirror.port, target, {"Authorization": auth} if auth else {})
        assert status in (400, 401, 404), (target, status)
        assert len(body) < 1000 and b"schemaVersion" not in body


def test_catalog_and_tags_show_only_readable_repositories(mirror, upstream):
    r = requests.get(f"{mirror.url}/v2/_catalog", auth=("bob", "bobpw"))
    assert r.status_code == 200, r.text
    assert r.json()["repositories"] == ["public/x"]
    r = requests.get(f"{mirror.url}/v2/_catalog", auth=("alice", "pw"))
    assert sorted(r.json()["repositories"]) == ["private/app", "public/x"]
    assert requests.get(f"{mirror.url}/v2/_catalog").status_code == 401
    # A token for the catalog scope lists what its subject may read.
    t = requests.get(f"{mirror.url}/auth/token",
                     params={"service": SERVICE, "scope": "registry:catalog:*"}).json()["token"]
    r = requests.get(f"{mirror.url}/v2/_catalog", headers={"Authorization": "Bearer " + t})
    assert r.status_code == 200 and r.json()["repositories"] == ["public/x"]
    assert requests.get(f"{mirror.url}/v2/private/app/tags/list",
                        auth=("alice", "pw")).json()["tags"] == ["v1"]
    assert requests.get(f"{mirror.url}/v2/private/app/tags/list",
                        auth=("bob", "bobpw")).status_code == 401


def test_alice_and_bob_racing_for_an_uncached_private_digest(build_dir, tmp_path, upstream):
    """bob asks for a private digest under a repository he may read, at the moment alice's
    request starts the fill: he never joins it."""
    d = start_drayage(build_dir / "src" / "drayage", tmp_path / "race", upstream)
    try:
        big = upstream.private.layers[1]
        # alice fetches the manifest; no blob is cached or proven yet.
        assert requests.get(f"{d.url}/v2/private/app/manifests/v1", auth=("alice", "pw"),
                            headers={"Accept": ALL_MANIFESTS}).status_code == 200

        def alice(_):
            r = requests.get(f"{d.url}/v2/private/app/blobs/{big.digest}", auth=("alice", "pw"))
            return r.status_code, hashlib.sha256(r.content).hexdigest()

        def bob(_):
            out = []
            for path in (f"/v2/public/x/blobs/{big.digest}", f"/v2/private/app/blobs/{big.digest}"):
                r = requests.get(d.url + path, auth=("bob", "bobpw"))
                out.append((r.status_code, len(r.content)))
            return out

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            fa = [pool.submit(alice, i) for i in range(2)]
            fb = [pool.submit(bob, i) for i in range(6)]
            assert all(f.result() == (200, big.digest[7:]) for f in fa)
            for f in fb:
                (s1, n1), (s2, n2) = f.result()
                assert s1 == 404 and n1 < 1000
                assert s2 == 401 and n2 < 1000
    finally:
        d.stop()


def test_removing_alices_rule_denies_her(build_dir, tmp_path, upstream, mirror):
    layer = upstream.private.layers[0]
    d = start_drayage(build_dir / "src" / "drayage", tmp_path / "before", upstream)
    cache = tmp_path / "before" / "cache"
    assert requests.get(f"{d.url}/v2/private/app/blobs/{layer.digest}",
                        auth=("alice", "pw")).status_code == 200
    tok = requests.get(f"{d.url}/auth/token", auth=("alice", "pw"),
                       params={"scope": "repository:private/app:pull"}).json()["token"]
    d.stop()
    # Same cache, same signing key, alice's rule gone: neither Basic nor her old token works.
    d = start_drayage(build_dir / "src" / "drayage", tmp_path / "after", upstream,
                      rules=[{"repositories": ["public/**"], "pull": ["*"]}], cache=cache)
    try:
        assert requests.get(f"{d.url}/v2/private/app/blobs/{layer.digest}",
                            auth=("alice", "pw")).status_code == 401
        assert requests.get(f"{d.url}/v2/private/app/blobs/{layer.digest}",
                            headers={"Authorization": "Bearer " + tok}).status_code == 401
        assert requests.get(f"{d.url}/v2/public/x/blobs/{upstream.public.layers[0].digest}",
                            auth=("alice", "pw")).status_code == 200
    finally:
        d.stop()


def test_sighup_reloads_the_rules(build_dir, tmp_path, upstream):
    import signal

    import yaml
    layer = upstream.private.layers[0]
    d = start_drayage(build_dir / "src" / "drayage", tmp_path / "hup", upstream)
    try:
        blob = f"{d.url}/v2/private/app/blobs/{layer.digest}"
        assert requests.get(blob, auth=("alice", "pw")).status_code == 200
        tok = requests.get(f"{d.url}/auth/token", auth=("alice", "pw"),
                           params={"scope": "repository:private/app:pull"}).json()["token"]

        def reload(config: dict):
            d.config_path.write_text(yaml.safe_dump(config))
            d.signal(signal.SIGHUP)

        # A broken file: the old rules stay.
        d.config_path.write_text("auth: [not, a, section\n")
        d.signal(signal.SIGHUP)
        # No way to observe "nothing changed" but by asking after the signal was handled.
        deadline = time.monotonic() + 20
        while "auth rules not reloaded" not in d.log():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert requests.get(blob, auth=("alice", "pw")).status_code == 200

        cfg = dict(d.config)
        cfg["auth"] = dict(cfg["auth"], rules=[{"repositories": ["public/**"], "pull": ["*"]}])
        reload(cfg)
        deadline = time.monotonic() + 20
        while requests.get(blob, auth=("alice", "pw")).status_code != 401:
            assert time.monotonic() < deadline, "alice still allowed after the reload"
            time.sleep(0.1)
        assert requests.get(blob, headers={"Authorization": "Bearer " + tok}).status_code == 401
        assert requests.get(f"{d.url}/v2/public/x/blobs/{upstream.public.layers[0].digest}",
                            auth=("alice", "pw")).status_code == 200
    finally:
        d.stop()


def worker_hits(d) -> float:
    return d.metric("drayage_http_worker_hits_total")


def test_hit_workers_admit_tokens_and_anonymous_reads_and_leave_the_rest_to_the_loop(mirror,
                                                                                   upstream):
    """With auth, hit workers serve cached blobs to a valid Bearer token or an anonymous client
    the rules admit, and only for a repository the blob is linked to; everything else (Basic
    credentials, no access, a digest of another repository) is answered by the main loop, the
    same as without workers. Each request on a new connection, so all four loops see each case."""
    layer = upstream.private.layers[0]
    pub = upstream.public.layers[0]
    tok = requests.get(f"{mirror.url}/auth/token", auth=("alice", "pw"),
                       params={"service": SERVICE,
                               "scope": "repository:private/app:pull"}).json()["token"]
    bob_tok = requests.get(f"{mirror.url}/auth/token", auth=("bob", "bobpw"),
                           params={"service": SERVICE,
                                   "scope": "repository:private/app:pull"}).json()["token"]
    assert requests.get(f"{mirror.url}/v2/public/x/blobs/{pub.digest}").status_code == 200
    before = worker_hits(mirror)
    private = f"/v2/private/app/blobs/{layer.digest}"
    seen = len(mirror.access(private))
    for _ in range(24):
        status, _, body = raw_get(mirror.port, private, {"Authorization": "Bearer " + tok})
        assert status == 200 and hashlib.sha256(body).hexdigest() == layer.digest[7:]
        status, _, body = raw_get(mirror.port, f"/v2/public/x/blobs/{pub.digest}")
        assert status == 200 and hashlib.sha256(body).hexdigest() == pub.digest[7:]
        # Refused wherever the connection lands.
        for headers in ({}, {"Authorization": "Bearer " + bob_tok},
                        {"Authorization": "Bearer " + forge(sub="mallory", key="x" * 40)},
                        {"Authorization": basic("bob", "bobpw")}):
            status, _, body = raw_get(mirror.port, private, headers)
            assert status == 401 and len(body) < 1000, (headers, status)
        # alice may read public/x, but this digest does not belong there.
        status, _, body = raw_get(mirror.port, f"/v2/public/x/blobs/{layer.digest}",
                                  {"Authorization": "Bearer " + forge(access=[
                                      {"type": "repository", "name": "public/x",
                                       "actions": ["pull"]}])})
        assert status == 404 and len(body) < 1000
    # 48 admitted hits over four loops: the workers took some.
    assert worker_hits(mirror) > before
    admitted = [a for a in mirror.access(private)[seen:] if a["status"] == 200]
    assert [a["user"] for a in admitted] == ["alice"] * 24, admitted


def test_password_checks_run_beside_the_loop(build_dir, tmp_path, upstream):
    """bcrypt is slow by design. drayage checks new passwords on threads of its own: while one
    is being checked (cost 15 here, a second or more), the loop goes on answering other clients.
    Clients sending the same new credentials at once share one check; a wrong password is
    checked once, then refused from memory."""
    wd = tmp_path / "slow"
    cfg = {
        "upstream": {"url": upstream.url, "username": "mirror", "password": "mpw"},
        "auth": auth_config(wd, RULES),
        "http": {"workers": 0},  # one loop: a check on it would hold up every other request
    }
    entry = subprocess.run(["htpasswd", "-Bbn", "-C", "15", "carol", "cpw"], check=True,
                           capture_output=True, text=True).stdout.strip()
    pathlib.Path(cfg["auth"]["htpasswd"]["path"]).write_text(entry + "\n")
    d = Drayage(build_dir / "src" / "drayage", wd, cfg).start()
    checks = lambda result: d.metric("drayage_auth_password_checks_total",  # noqa: E731
                                     f'result="{result}"')
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            carol = [pool.submit(raw_get, d.port, "/v2/", {"Authorization": basic("carol", "cpw")})
                     for _ in range(2)]
            deadline = time.monotonic() + 20
            while d.metric("drayage_http_open_connections") < 3:  # both are in, and this one
                assert time.monotonic() < deadline, "carol's two requests never connected"
                time.sleep(0.02)
            for _ in range(5):
                assert raw_get(d.port, "/v2/")[0] == 401  # anonymous: challenged at once
            assert not any(f.done() for f in carol), "the loop waited for a password check"
            assert [f.result()[0] for f in carol] == [200, 200]
        assert checks("ok") == 1
        assert raw_get(d.port, "/v2/", {"Authorization": basic("carol", "cpw")})[0] == 200
        for _ in range(3):
            assert raw_get(d.port, "/v2/", {"Authorization": basic("carol", "nope")})[0] == 401
        assert (checks("ok"), checks("wrong")) == (1, 1)
    finally:
        d.stop()


def test_a_flood_of_made_up_passwords_is_turned_away_not_queued(build_dir, tmp_path, upstream):
    """Past 128 credentials waiting for their check, new ones get a quick 503 instead of a place
    in a queue of minutes of bcrypt; those queued are answered, and known clients never wait."""
    wd = tmp_path / "flood"
    cfg = {
        "upstream": {"url": upstream.url, "username": "mirror", "password": "mpw"},
        "auth": auth_config(wd, RULES),
        "http": {"workers": 0},
    }
    entry = subprocess.run(["htpasswd", "-Bbn", "-C", "11", "carol", "cpw"], check=True,
                           capture_output=True, text=True).stdout.strip()
    pathlib.Path(cfg["auth"]["htpasswd"]["path"]).write_text(entry + "\n")
    d = Drayage(build_dir / "src" / "drayage", wd, cfg).start()
    try:
        assert raw_get(d.port, "/v2/", {"Authorization": basic("carol", "cpw")})[0] == 200
        # More clients at once than may wait, each on its own connection. All connect first and
        # then send within a few milliseconds, so the queue overflows however slowly this
        # (shared, loaded) machine starts threads.
        flood = [socket.create_connection(("127.0.0.1", d.port), timeout=120) for _ in range(300)]
        try:
            for i, s in enumerate(flood):
                s.sendall((f"GET /v2/ HTTP/1.1\r\nHost: x\r\nAuthorization: "
                           f"{basic('mallory', f'guess{i}')}\r\n\r\n").encode())
            # carol's answer is known: she is served at once, flood or not.
            assert raw_get(d.port, "/v2/", {"Authorization": basic("carol", "cpw")})[0] == 200
            results = []
            for s in flood:
                r = http.client.HTTPResponse(s)
                r.begin()
                results.append((r.status, r.read()))
        finally:
            for s in flood:
                s.close()
        statuses = [r[0] for r in results]
        assert set(statuses) == {401, 503}, sorted(set(statuses))
        busy = [r for r in results if r[0] == 503]
        assert all(json.loads(body)["errors"][0]["code"] == "UNAVAILABLE" for _, body in busy)
        assert d.metric("drayage_auth_password_checks_total", 'result="busy"') == len(busy)
        assert d.metric("drayage_auth_password_checks_total", 'result="wrong"') == 300 - len(busy)
    finally:
        d.stop()
