"""auth.passthrough: for vendor/** the upstream decides, with the client's own Basic credentials
(an upstream token for repository:<name>:pull and a HEAD), decisions cached for passthrough_ttl
both ways, and any failure denies: with the upstream down, a credential drayage has not seen is
never served cached content.
"""
import hashlib

import pytest
import requests

from harness.drayage import Drayage
from harness.registry import ALL_MANIFESTS, KiB, Registry
from harness.tokenserver import TokenServer
from test_auth_pull import auth_config


@pytest.fixture
def setup(build_dir, tmp_path):
    tokens = TokenServer(tmp_path / "tokens", users={
        "mirror": {"password": "mpw", "access": {"*": ["pull", "push"]}},
        "carol": {"password": "cpw", "access": {"vendor/*": ["pull"]}},
        "erin": {"password": "epw", "access": {"vendor/*": ["pull"]}},
        "dave": {"password": "dpw", "access": {"other/*": ["pull"]}},
    })
    tokens.start()
    reg = Registry(tmp_path / "reg", token=tokens).start()
    reg.image = reg.push_image("vendor/app", "v1", [3 * KiB], seed=51, creds="mirror:mpw")
    cfg = auth_config(tmp_path / "d", [{"repositories": ["public/**"], "pull": ["*"]}])
    cfg["passthrough"] = ["vendor/**"]
    cfg["passthrough_ttl"] = "60s"
    d = Drayage(build_dir / "src" / "drayage", tmp_path / "d", {
        "upstream": {"url": reg.url, "username": "mirror", "password": "mpw",
                     "connect_timeout": "2s", "response_timeout": "5s"},
        "auth": cfg,
    }).start()
    yield tokens, reg, d
    d.stop()
    reg.stop()
    tokens.stop()


def token_requests_by(tokens, user):
    return [r for r in tokens.token_requests() if r.get("user") == user]


def get_all(d, reg, auth):
    """Manifest by tag, then every blob; the list of statuses."""
    out = [requests.get(f"{d.url}/v2/vendor/app/manifests/v1", auth=auth,
                        headers={"Accept": ALL_MANIFESTS}).status_code]
    for b in reg.image.layers + [reg.image.config]:
        r = requests.get(f"{d.url}/v2/vendor/app/blobs/{b.digest}", auth=auth)
        out.append(r.status_code)
        if r.status_code == 200:
            assert hashlib.sha256(r.content).hexdigest() == b.digest[7:]
        else:
            assert len(r.content) < 1000
    return out


def test_upstream_decides_with_the_clients_credentials(setup):
    tokens, reg, d = setup
    assert set(get_all(d, reg, ("carol", "cpw"))) == {200}
    carol_tokens = len(token_requests_by(tokens, "carol"))
    assert carol_tokens >= 1
    # Cached: the next requests ask the upstream nothing more for carol.
    assert set(get_all(d, reg, ("carol", "cpw"))) == {200}
    assert len(token_requests_by(tokens, "carol")) == carol_tokens

    # dave's upstream token has no vendor/* access: denied, and the denial is cached too.
    assert set(get_all(d, reg, ("dave", "dpw"))) == {401}
    dave_tokens = len(token_requests_by(tokens, "dave"))
    assert set(get_all(d, reg, ("dave", "dpw"))) == {401}
    assert len(token_requests_by(tokens, "dave")) == dave_tokens

    # A wrong password and no credentials at all: denied, with a challenge for the scope.
    assert set(get_all(d, reg, ("carol", "nope"))) == {401}
    r = requests.get(f"{d.url}/v2/vendor/app/manifests/v1")
    assert r.status_code == 401
    assert 'scope="repository:vendor/app:pull"' in r.headers["WWW-Authenticate"]
    # Writes are never passed through.
    r = requests.put(f"{d.url}/v2/vendor/app/manifests/v2", auth=("carol", "cpw"), data=b"{}")
    assert r.status_code == 401


def test_token_endpoint_asks_the_upstream_for_passthrough_scopes(setup):
    tokens, reg, d = setup
    layer = reg.image.layers[0]
    url = f"{d.url}/v2/vendor/app/blobs/{layer.digest}"

    def token(auth, scope="repository:vendor/app:pull"):
        return requests.get(f"{d.url}/auth/token", params={"service": "drayage-auth-test",
                                                           "scope": scope}, auth=auth)

    # carol is not in drayage's htpasswd; the upstream vouches for her on vendor/app only.
    t = token(("carol", "cpw"))
    assert t.status_code == 200, t.text
    assert t.json()["expires_in"] == 60  # capped at passthrough_ttl
    bearer = {"Authorization": "Bearer " + t.json()["token"]}
    r = requests.get(url, headers=bearer)
    assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == layer.digest[7:]
    # The same token opens nothing the rules govern, not even what "*" may read.
    r = requests.get(f"{d.url}/v2/public/x/manifests/v1", headers=bearer)
    assert r.status_code == 401
    # dave and a wrong password: no token at all; alice (local, no rule, wrong upstream
    # credentials) gets a token without the grant.
    assert token(("dave", "dpw")).status_code == 401
    assert token(("carol", "bad")).status_code == 401
    t = token(("alice", "pw"))
    assert t.status_code == 200
    assert requests.get(url, headers={"Authorization": "Bearer " + t.json()["token"]}
                        ).status_code == 401
    # OAuth2 password grant: same decision.
    r = requests.post(f"{d.url}/auth/token", data={
        "grant_type": "password", "username": "carol", "password": "cpw",
        "service": "drayage-auth-test", "client_id": "t", "scope": "repository:vendor/app:pull"})
    assert r.status_code == 200 and "refresh_token" not in r.json()
    assert requests.get(url, headers={"Authorization": "Bearer " + r.json()["access_token"]}
                        ).status_code == 200


def test_upstream_down_a_new_credential_gets_nothing(setup):
    tokens, reg, d = setup
    assert set(get_all(d, reg, ("carol", "cpw"))) == {200}  # warms the cache
    reg.stop()
    tokens.stop()
    # erin would be allowed upstream, but drayage cannot ask: fail closed.
    assert set(get_all(d, reg, ("erin", "epw"))) == {401}
    assert set(get_all(d, reg, ("carol", "other-password"))) == {401}
    r = requests.get(f"{d.url}/auth/token", auth=("erin", "epw"),
                     params={"scope": "repository:vendor/app:pull"})
    assert r.status_code == 401
    m = requests.get(f"{d.url}/metrics").text
    assert 'drayage_auth_passthrough_checks_total{result="error"}' in m


def test_skopeo_pulls_a_passthrough_repository_with_upstream_credentials(setup, tmp_path):
    from harness.clients import dir_blobs, skopeo_pull
    from test_auth_clients import auth_json
    tokens, reg, d = setup
    host = f"127.0.0.1:{d.port}"
    carol = auth_json(tmp_path / "carol.json", host, "carol", "cpw")
    r = skopeo_pull(tmp_path / "s1", host, "vendor/app:v1", tmp_path / "p1", auth_file=carol)
    assert r.returncode == 0, r.stderr + d.log()[-2000:]
    assert all(b.digest in dir_blobs(tmp_path / "p1") for b in reg.image.layers)
    dave = auth_json(tmp_path / "dave.json", host, "dave", "dpw")
    r = skopeo_pull(tmp_path / "s2", host, "vendor/app:v1", tmp_path / "p2", auth_file=dave)
    assert r.returncode != 0
