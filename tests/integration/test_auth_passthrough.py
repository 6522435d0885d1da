"""auth.passthrough: for vendor/** the upstream decides, with the client's own Basic credentials
(an upstream token for repository:<name>:pull and a HEAD), decisions cached for passthrough_ttl
both ways, and any failure denies: with the upstream down, a credential drayage has not seen is
never served cached content. A token request names at most 32 scopes, and the checks it and
everyone else start are bounded in flight (16 in all, 4 per client address), counted at the
upstream's token server.
"""
import concurrent.futures
import hashlib
import http.client
import json
import urllib.parse

import jwt
import pytest
import requests

from harness.drayage import Drayage
from harness.registry import ALL_MANIFESTS, KiB, Registry
from harness.tokenserver import TokenServer
from test_auth_pull import SERVICE, auth_config, basic
from test_http_server import wait_until

# UpstreamAccessCheck::kMaxRunning, kMaxRunningPerClient; kMaxTokenScopes (auth.hpp).
MAX_RUNNING = 16
MAX_RUNNING_PER_CLIENT = 4
MAX_SCOPES = 32


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
        # A long response_timeout: some tests hold the token server's answers while they count.
        "upstream": {"url": reg.url, "username": "mirror", "password": "mpw",
                     "connect_timeout": "2s", "response_timeout": "60s"},
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


def token_from(d, auth, repos, address="127.0.0.1"):
    """GET /auth/token with a pull scope per repository, from `address` (every 127/8 address is
    this host): the status and the JSON body."""
    query = urllib.parse.urlencode([("service", SERVICE)] +
                                   [("scope", f"repository:{r}:pull") for r in repos])
    c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=120, source_address=(address, 0))
    try:
        c.request("GET", "/auth/token?" + query, headers={"Authorization": basic(*auth)})
        r = c.getresponse()
        return r.status, json.loads(r.read())
    finally:
        c.close()


def granted(body):
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    return sorted(a["name"] for a in claims["access"] if "pull" in a["actions"])


def checks_waiting(d):
    return d.metric("drayage_auth_passthrough_checks", 'state="waiting"')


def held_in_flight(tokens, d, total):
    """With the token server holding its answers: the number of token requests in flight once
    each of `total` checks is either in flight there or waiting for its turn in drayage."""
    wait_until(lambda: tokens.in_flight() + checks_waiting(d) >= total,
               f"{total} pass-through checks in flight or waiting")
    return tokens.in_flight()


def test_a_token_request_with_too_many_scopes_is_refused_before_any_check(setup):
    tokens, reg, d = setup
    marks = len(tokens.token_requests()), len(reg.requests())
    scopes = [f"repository:vendor/many{i}:pull" for i in range(MAX_SCOPES + 1)]
    answers = [
        # As many scope parameters, one parameter with them space-separated, the OAuth2 form.
        requests.get(f"{d.url}/auth/token", params={"service": SERVICE, "scope": scopes},
                     auth=("carol", "cpw")),
        requests.get(f"{d.url}/auth/token", params={"service": SERVICE,
                                                    "scope": " ".join(scopes)},
                     auth=("carol", "cpw")),
        requests.post(f"{d.url}/auth/token", data={
            "grant_type": "password", "username": "carol", "password": "cpw",
            "service": SERVICE, "client_id": "t", "scope": " ".join(scopes)}),
    ]
    for r in answers:
        assert r.status_code == 400, r.text
        body = r.json()
        assert body["errors"][0]["code"] == "UNSUPPORTED"
        assert f"at most {MAX_SCOPES} scopes" in body["errors"][0]["message"]
        assert body["error"] == "invalid_scope"
    # Nothing was asked upstream, or even checked.
    assert (len(tokens.token_requests()), len(reg.requests())) == marks
    assert d.metric("drayage_auth_passthrough_checks_total") == 0


def test_scopes_within_the_cap_go_through_one_client_four_at_a_time(setup):
    tokens, reg, d = setup
    repos = [f"vendor/b{i}" for i in range(MAX_SCOPES)]
    tokens.hold()
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            answer = pool.submit(token_from, d, ("carol", "cpw"), repos)
            in_flight = held_in_flight(tokens, d, len(repos))
            tokens.release()
            status, body = answer.result()
    finally:
        tokens.release()
    assert in_flight == MAX_RUNNING_PER_CLIENT
    assert tokens.max_in_flight == MAX_RUNNING_PER_CLIENT
    assert status == 200, body
    assert granted(body) == sorted(repos)
    # One token and one HEAD per repository (a 404: vendor/b* do not exist, but carol may read
    # them); besides, until the shared client has learned the registry's challenge, at most the
    # first round of checks went anonymous.
    asked = [t for t in tokens.token_requests() if t["user"] == "carol"]
    assert len(asked) == len(repos)
    heads = reg.wait_for_requests(lambda r: r["path"].startswith("/v2/vendor/b"), len(repos))
    assert len([h for h in heads if h["status"] == 404]) == len(repos)
    assert len([h for h in heads if h["status"] == 401]) <= MAX_RUNNING_PER_CLIENT
    assert len(heads) <= len(repos) + MAX_RUNNING_PER_CLIENT


def test_a_wrong_password_costs_the_upstream_one_round_of_checks(setup):
    tokens, reg, d = setup
    # alice is drayage's own user; with a wrong password drayage's bcrypt answer is cached, and
    # the upstream does not know her: each scope could be one more upstream round trip.
    first = [f"vendor/c{i}" for i in range(MAX_SCOPES)]
    status, body = token_from(d, ("alice", "nope"), first)
    assert status == 401, body
    refused = tokens.token_requests(status=401)
    assert 1 <= len(refused) <= MAX_RUNNING_PER_CLIENT
    marks = len(tokens.token_requests()), len(reg.requests())
    # The same credentials again, for the same and for other repositories, on the token
    # endpoint and on /v2/: refused from memory.
    assert token_from(d, ("alice", "nope"), first)[0] == 401
    assert token_from(d, ("alice", "nope"), [f"vendor/d{i}" for i in range(MAX_SCOPES)])[0] == 401
    r = requests.get(f"{d.url}/v2/vendor/app/manifests/v1", auth=("alice", "nope"),
                     headers={"Accept": ALL_MANIFESTS})
    assert r.status_code == 401
    assert (len(tokens.token_requests()), len(reg.requests())) == marks
    # Other credentials are asked about as before.
    status, body = token_from(d, ("carol", "cpw"), ["vendor/app"])
    assert status == 200 and granted(body) == ["vendor/app"]


def test_many_clients_at_once_keep_at_most_sixteen_checks_in_flight(setup):
    tokens, reg, d = setup
    # 6 addresses x 2 token requests x 16 repositories: 4 per address would be 24 at once.
    calls = [(f"127.0.0.{2 + a}", [f"vendor/m{a}-{n}-{i}" for i in range(16)])
             for a in range(6) for n in range(2)]
    total = sum(len(repos) for _, repos in calls)
    tokens.hold()
    try:
        with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
            answers = [pool.submit(token_from, d, ("erin", "epw"), repos, address)
                       for address, repos in calls]
            in_flight = held_in_flight(tokens, d, total)
            tokens.release()
            results = [a.result() for a in answers]
    finally:
        tokens.release()
    assert in_flight == MAX_RUNNING
    assert tokens.max_in_flight == MAX_RUNNING
    for (_, repos), (status, body) in zip(calls, results):
        assert status == 200, body
        assert granted(body) == sorted(repos)
    assert checks_waiting(d) == 0
