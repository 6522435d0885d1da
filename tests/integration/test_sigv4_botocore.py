"""Differential test of drayage's S3 signers against botocore (Debian python3-botocore 1.29).

A few hundred S3 requests with awkward keys, query parameters and headers are signed at a fixed
time by botocore (S3SigV4Auth, S3SigV4QueryAuth, HmacV1Auth) and by drayage through the
`sigv4_tool` helper (tests/unit/s3/auth/sigv4_tool.cpp, JSON lines in and out). Every
Authorization header, presigned query and string to sign must agree; a mismatch prints both
canonical forms side by side.

Then the real peer: Swift's s3api (harness/swift.py) must accept objects written, read, listed
and presigned with drayage's SigV4 and SigV2 signatures for the same awkward keys, and reject a
wrong secret with SignatureDoesNotMatch.

Run: DRAYAGE_BUILD_DIR=build-xxx /usr/bin/python3 -m pytest tests/integration/test_sigv4_botocore.py
(needs `ninja -C $DRAYAGE_BUILD_DIR tests/unit/s3/auth/sigv4_tool`).
"""
import datetime
import difflib
import email.utils
import hashlib
import http.client
import json
import os
import pathlib
import random
import subprocess
from unittest import mock
from urllib.parse import quote, urlsplit

import pytest
from botocore.auth import HmacV1Auth, S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.config import Config
from botocore.credentials import Credentials
from harness.swift import swift  # noqa: F401 - pytest fixture

ROOT = pathlib.Path(__file__).resolve().parents[2]
ENDPOINT = "http://127.0.0.1:9000"  # never contacted: only signed
HOST = "127.0.0.1:9000"
REGION = "us-east-1"
AMZ_DATE = "20260314T150926Z"
FROZEN = datetime.datetime(2026, 3, 14, 15, 9, 26)
HTTP_DATE = "Sat, 14 Mar 2026 15:09:26 GMT"
ACCESS_KEY = "test:tester"
SECRET_KEY = "testing/+Secret=="
TOKEN = "FwoGZXIvYXdzEJr//////////wEaDAbc+def/ghi=="


@pytest.fixture(scope="module")
def tool():
    build = pathlib.Path(os.environ.get("DRAYAGE_BUILD_DIR", ROOT / "build")).resolve()
    exe = build / "tests" / "unit" / "s3" / "auth" / "sigv4_tool"
    if not exe.exists():
        pytest.fail(f"{exe} missing: ninja -C {build} tests/unit/s3/auth/sigv4_tool")

    def run(requests):
        lines = "".join(json.dumps(r) + "\n" for r in requests)
        out = subprocess.run([str(exe)], input=lines.encode(), capture_output=True,
                             check=True, timeout=120).stdout.decode().splitlines()
        assert len(out) == len(requests)
        return [json.loads(line) for line in out]

    return run


# ---------------------------------------------------------------------------------------------
# Request generation (deterministic: a fixed seed, so a failure reproduces)

AWKWARD_PIECES = [
    "a b", "plus+sign", "colon:x", "100%", "pct%2F", "eq=val", "amp&x", "caf\u00e9",
    "\u65e5\u672c\u8a9e", "emoji\U0001F600", "tilde~", "bang!", "star*", "quote'", "(paren)",
    "//", "a//b", "./dot", "../up", "semi;colon", "comma,", "at@", "dollar$", "hash#",
    "question?", "brackets[]", "curly{}", "caret^", "back\\slash", "pipe|", "lt<gt>",
    "tab\tin", "-._", "UPPER", "sha256:4bcff639",
]


def awkward_key(rng: random.Random) -> str:
    parts = [rng.choice(AWKWARD_PIECES) for _ in range(rng.randint(1, 6))]
    key = rng.choice(["", "/", "docker/registry/v2/"]) + "/".join(parts)
    if rng.random() < 0.1:  # long keys, up to S3's 1024-byte limit
        filler = rng.choice(["x", "\u00e9", "a b", "%"])
        while len((key + filler).encode()) <= 1024:
            key += filler
    while len(key.encode()) > 1024:
        key = key[:-1]
    return key or "k"


QUERY_VALUES = ["", "/", "a/b c", "x+y", "p%q", "k=v&w", "caf\u00e9", "~!*'()", "2", "10000",
                "VXBsb2FkSUQ=", "2~abc.def_ghi-jkl", "docker/registry/v2/repositories/"]


def awkward_query(rng: random.Random, method: str):
    """[(key, value, bare)]: S3 operations' parameters and awkward extras."""
    choice = rng.randrange(7)
    if choice == 0:
        q = []
    elif choice == 1:
        q = [("uploads", "", True)]
    elif choice == 2:
        q = [("partNumber", str(rng.randint(1, 10000)), False),
             ("uploadId", rng.choice(QUERY_VALUES[1:]), False)]
    elif choice == 3:
        q = [("list-type", "2", False), ("prefix", rng.choice(QUERY_VALUES), False),
             ("delimiter", "/", False)]
        if rng.random() < 0.5:
            q.append(("continuation-token", rng.choice(QUERY_VALUES), False))
        if rng.random() < 0.5:
            q.append(("max-keys", str(rng.randint(0, 1000)), False))
    elif choice == 4:
        q = [("uploadId", rng.choice(QUERY_VALUES), False)]
    elif choice == 5:
        q = [("versionId", rng.choice(QUERY_VALUES), False),
             ("response-content-type", "application/octet-stream", False)]
    else:
        q = [(rng.choice(["x-id", "empty", "Z", "a", "\u00e9t\u00e9", "k+k", "k k"]),
              rng.choice(QUERY_VALUES), False) for _ in range(rng.randint(1, 4))]
    rng.shuffle(q)
    return q


def awkward_headers(rng: random.Random, method: str):
    h = []
    if method in ("PUT", "POST"):
        h.append(("Content-Type", rng.choice(["application/octet-stream",
                                              "application/vnd.oci.image.layer.v1.tar+gzip"])))
        if rng.random() < 0.5:
            h.append(("Content-MD5", "1B2M2Y8AsgTpgAhKRGN/CA=="))
    if method == "GET" and rng.random() < 0.5:
        h.append(("Range", f"bytes={rng.randint(0, 99)}-{rng.randint(100, 10**9)}"))
    if rng.random() < 0.4:
        h.append(("x-amz-meta-note", rng.choice(["  lead", "trail  ", "in   side", "a\tb",
                                                 "plain"])))
    if rng.random() < 0.2:
        h.append(("X-Amz-Meta-Dup", "one"))
        h.append(("x-amz-meta-dup", " two "))
    if rng.random() < 0.2:
        h.append(("x-amz-storage-class", "STANDARD"))
    if method == "PUT" and rng.random() < 0.2:
        h.append(("x-amz-copy-source", "/bucket/" + quote(awkward_key(rng), safe="/~")))
    rng.shuffle(h)
    return h


def wire_query(query) -> str:
    return "&".join(quote(k, safe="-_.~") + ("" if bare else "=" + quote(v, safe="-_.~"))
                    for k, v, bare in query)


def generate(n: int, seed: int):
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        method = rng.choice(["GET", "PUT", "POST", "DELETE", "HEAD"])
        body = b""
        if method in ("PUT", "POST") and rng.random() < 0.7:
            body = rng.randbytes(rng.randint(1, 4096))
        cases.append({
            "method": method,
            "bucket": rng.choice(["bucket", "reg-bucket.1", "b"]),
            "key": awkward_key(rng),
            "query": awkward_query(rng, method),
            "headers": awkward_headers(rng, method),
            "body": body,
            "token": TOKEN if rng.random() < 0.3 else "",
        })
    return cases


# ---------------------------------------------------------------------------------------------
# botocore side

def botocore_request(case) -> AWSRequest:
    path = "/" + case["bucket"] + "/" + quote(case["key"], safe="/~")
    url = ENDPOINT + path
    q = wire_query(case["query"])
    if q:
        url += "?" + q
    headers = HTTPHeaders()
    for name, value in case["headers"]:
        headers[name] = value  # repeated names accumulate, as on the wire
    return AWSRequest(method=case["method"], url=url, headers=headers, data=case["body"])


def creds(case):
    return Credentials(ACCESS_KEY, SECRET_KEY, case["token"] or None)


def boto_sigv4(case, unsigned=False):
    req = botocore_request(case)
    if unsigned:
        req.url = req.url.replace("http://", "https://", 1)
        req.context["client_config"] = Config(s3={"payload_signing_enabled": False})
    auth = S3SigV4Auth(creds(case), "s3", REGION)
    seen = []
    canonical_request = auth.canonical_request
    auth.canonical_request = lambda r: (seen.append(canonical_request(r)), seen[-1])[1]
    with mock.patch("botocore.auth.datetime") as dt:
        dt.datetime.utcnow.return_value = FROZEN
        auth.add_auth(req)
    return req, seen[0]


def boto_presign(case, expires):
    req = botocore_request(case)
    auth = S3SigV4QueryAuth(creds(case), "s3", REGION, expires=expires)
    with mock.patch("botocore.auth.datetime") as dt:
        dt.datetime.utcnow.return_value = FROZEN
        auth.add_auth(req)
    return req


class FixedDateHmacV1(HmacV1Auth):
    def _get_date(self):
        return HTTP_DATE


def boto_sigv2(case):
    req = botocore_request(case)
    auth = FixedDateHmacV1(creds(case))
    seen = []
    sign_string = auth.sign_string
    auth.sign_string = lambda sts: (seen.append(sts), sign_string(sts))[1]
    auth.add_auth(req)
    return req, seen[0]


# ---------------------------------------------------------------------------------------------
# drayage side

def tool_request(case, mode, **extra):
    r = {
        "mode": mode,
        "method": case["method"],
        "bucket": case["bucket"],
        "key": case["key"],
        "query": [[k, v, bare] for k, v, bare in case["query"]],
        "headers": [["Host", HOST]] + [[n, v] for n, v in case["headers"]],
        "access_key": ACCESS_KEY,
        "secret_key": SECRET_KEY,
        "token": case["token"],
        "region": REGION,
        "amz_date": AMZ_DATE,
        "date": HTTP_DATE,
    }
    r.update(extra)
    return r


def describe(i, case, what, ours, theirs):
    diff = "\n".join(difflib.unified_diff(theirs.splitlines(), ours.splitlines(),
                                          "botocore", "drayage", lineterm=""))
    return (f"case {i}: {case['method']} key={case['key']!r} query={case['query']!r} "
            f"headers={case['headers']!r} token={bool(case['token'])}\n{what} differs:\n{diff}")


# ---------------------------------------------------------------------------------------------
# Tests

def test_sigv4_header_signing_matches_botocore(tool):
    cases = generate(400, seed=20260314)
    ours = tool([tool_request(c, "v4", payload_hash=hashlib.sha256(c["body"]).hexdigest())
                 for c in cases])
    failures = []
    for i, (case, mine) in enumerate(zip(cases, ours)):
        assert "error" not in mine, mine
        req, boto_cr = boto_sigv4(case)
        expected_path = "/" + case["bucket"] + "/" + quote(case["key"], safe="/~")
        if mine["path"] != expected_path:
            failures.append(describe(i, case, "path", mine["path"], expected_path))
        if mine["query_string"] != wire_query(case["query"]):
            failures.append(describe(i, case, "query", mine["query_string"],
                                     wire_query(case["query"])))
        if mine["authorization"] != req.headers["Authorization"]:
            failures.append(describe(i, case, "canonical request", mine["canonical_request"],
                                     boto_cr))
        added = dict((n.lower(), v) for n, v in mine["headers_to_add"])
        assert added["x-amz-date"] == req.headers["X-Amz-Date"]
        assert added["x-amz-content-sha256"] == req.headers["X-Amz-Content-SHA256"]
        assert added.get("x-amz-security-token") == req.headers.get("X-Amz-Security-Token")
    assert not failures, f"{len(failures)} of {len(cases)} differ:\n\n" + "\n\n".join(
        failures[:5])


def test_sigv4_unsigned_payload_matches_botocore(tool):
    cases = [c for c in generate(120, seed=7) if c["method"] in ("PUT", "POST")]
    assert len(cases) > 20
    ours = tool([tool_request(c, "v4", payload_hash="UNSIGNED-PAYLOAD") for c in cases])
    for i, (case, mine) in enumerate(zip(cases, ours)):
        req, boto_cr = boto_sigv4(case, unsigned=True)
        assert req.headers["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD"
        assert mine["authorization"] == req.headers["Authorization"], describe(
            i, case, "canonical request", mine["canonical_request"], boto_cr)


def test_presigned_urls_match_botocore(tool):
    # botocore's presigner keeps one value per parameter name and writes "uploads" as
    # "uploads=": take cases it represents faithfully.
    # A presigned URL is signed before any body exists (botocore would move a body into the query).
    cases = [dict(c, body=b"") for c in generate(300, seed=99)
             if len({k for k, _, _ in c["query"]}) == len(c["query"])
             and not any(bare for _, _, bare in c["query"])][:150]
    assert len(cases) >= 100
    expires = [60, 900, 3600, 604800]
    ours = tool([tool_request(c, "presign", expires=expires[i % 4],
                              payload_hash="UNSIGNED-PAYLOAD") for i, c in enumerate(cases)])
    for i, (case, mine) in enumerate(zip(cases, ours)):
        assert "error" not in mine, mine
        req = boto_presign(case, expires[i % 4])
        theirs = urlsplit(req.url).query
        assert mine["presigned_query"] == theirs, describe(
            i, case, "presigned query", mine["presigned_query"].replace("&", "\n"),
            theirs.replace("&", "\n"))


def test_sigv2_matches_botocore_hmacv1(tool):
    cases = generate(300, seed=2)
    ours = tool([tool_request(c, "v2") for c in cases])
    for i, (case, mine) in enumerate(zip(cases, ours)):
        assert "error" not in mine, mine
        req, sts = boto_sigv2(case)
        assert mine["authorization"] == req.headers["Authorization"], describe(
            i, case, "string to sign", mine["string_to_sign"], sts)
        assert mine["string_to_sign"] == sts


def test_mismatch_is_detected(tool):
    """The comparison can fail: a wrong secret gives a different Authorization."""
    case = generate(1, seed=5)[0]
    mine = tool([tool_request(case, "v4", secret_key="other",
                              payload_hash=hashlib.sha256(case["body"]).hexdigest())])[0]
    req, _ = boto_sigv4(case)
    assert mine["authorization"] != req.headers["Authorization"]


# ---------------------------------------------------------------------------------------------
# The real peer: Swift's s3api must accept what drayage signs (and reject a wrong secret).

def _send(swift, method, path, query, headers, body=b""):
    """Sends exactly `path?query` with `headers`; returns (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", swift.port, timeout=30)
    try:
        conn.putrequest(method, path + ("?" + query if query else ""), skip_host=True,
                        skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _signed(tool, swift, mode, method, key, query=(), headers=(), body=b"", secret=None):
    """Signs with drayage's signer at the current time and sends the request to Swift."""
    now = datetime.datetime.now(datetime.timezone.utc)
    base_headers = [["Host", f"127.0.0.1:{swift.port}"]] + [list(h) for h in headers]
    req = {
        "mode": mode, "method": method, "bucket": swift.bucket, "key": key,
        "query": [list(q) for q in query], "headers": base_headers,
        "access_key": swift.access_key, "secret_key": secret or swift.secret_key,
        "region": swift.region, "amz_date": now.strftime("%Y%m%dT%H%M%SZ"),
        "date": email.utils.format_datetime(now, usegmt=True), "expires": 300,
        "payload_hash": ("UNSIGNED-PAYLOAD" if mode == "presign"
                         else hashlib.sha256(body).hexdigest()),
    }
    signed = tool([req])[0]
    assert "error" not in signed, signed
    if mode == "presign":
        return _send(swift, method, signed["path"], signed["presigned_query"], base_headers,
                     body)
    out_headers = base_headers + signed["headers_to_add"] + [["Authorization",
                                                              signed["authorization"]]]
    return _send(swift, method, signed["path"], signed["query_string"], out_headers, body)


SWIFT_KEYS = [
    "plain", "a b", "plus+sign", "colon:x", "100%", "pct%2Fliteral", "eq=val", "amp&x",
    "caf\u00e9/\u65e5\u672c\u8a9e", "emoji\U0001F600", "tilde~bang!star*quote'(paren)",
    "dir//double", "semi;comma,at@dollar$", "hash#question?", "docker/registry/v2/blobs/sha256/4b/"
    "4bcff63911fcb4448bd4fdacec207030997caf25e9bea4045fa6c8c44de311d1/data",
    "long/" + "x" * 1000,
]


@pytest.mark.parametrize("mode", ["v4", "v2"])
def test_swift_accepts_drayage_signatures(tool, swift, mode):
    for i, key in enumerate(SWIFT_KEYS):
        body = f"{mode}-{i}-{key}".encode()
        status, text = _signed(tool, swift, mode, "PUT", key,
                               headers=[("Content-Type", "application/octet-stream"),
                                        ("x-amz-meta-note", "  spaced   out ")],
                               body=body)
        assert status == 200, (key, text)
        status, got = _signed(tool, swift, mode, "GET", key, headers=[("Range", "bytes=0-")])
        assert (status, got) == (206, body), (key, got)
        status, got = _signed(tool, swift, "presign", "GET", key)
        assert (status, got) == (200, body), (key, got)

    # Query signing: awkward prefix/delimiter, and a bare "?uploads" then "uploadId=...".
    status, listing = _signed(tool, swift, mode, "GET", "",
                              query=[("list-type", "2", False), ("prefix", "caf\u00e9/", False),
                                     ("delimiter", "/", False)])
    assert status == 200, listing
    assert "caf\u00e9/\u65e5\u672c\u8a9e".encode() in listing
    status, init = _signed(tool, swift, mode, "POST", "mp key+1", query=[("uploads", "", True)])
    assert status == 200, init
    upload_id = init.split(b"<UploadId>")[1].split(b"</UploadId>")[0].decode()
    status, text = _signed(tool, swift, mode, "DELETE", "mp key+1",
                           query=[("uploadId", upload_id, False)])
    assert status == 204, text

    for key in SWIFT_KEYS:
        status, text = _signed(tool, swift, mode, "DELETE", key)
        assert status == 204, (key, text)


@pytest.mark.parametrize("mode", ["v4", "v2", "presign"])
def test_swift_rejects_a_wrong_secret(tool, swift, mode):
    status, text = _signed(tool, swift, mode, "GET", "nothing-here", secret="not-the-secret")
    assert status == 403, text
    assert b"SignatureDoesNotMatch" in text
