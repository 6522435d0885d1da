"""The S3 client (src/s3/client) against a real OpenStack Swift + s3api, through s3_tool.

Bytes are checked by sha256 end to end; request counts and timings come from Swift's access log;
faults (503 SlowDown, resets, stalls) come from harness/faultproxy.py put in front of Swift.

Run: DRAYAGE_BUILD_DIR=build-x /usr/bin/python3 -m pytest tests/integration/test_s3_client.py
(needs `ninja -C build-x tests/unit/s3/client/s3_tool`).
"""
import hashlib
import json
import os
import pathlib
import subprocess
import threading
import uuid

import pytest
import yaml

from harness.faultproxy import FaultProxy, Rule
from harness.swift import swift  # noqa: F401 - session fixture

ROOT = pathlib.Path(__file__).resolve().parents[2]
MiB = 1024 * 1024


@pytest.fixture(scope="session")
def s3_tool() -> pathlib.Path:
    d = pathlib.Path(os.environ.get("DRAYAGE_BUILD_DIR", ROOT / "build")).resolve()
    tool = d / "tests" / "unit" / "s3" / "client" / "s3_tool"
    if not tool.exists():
        pytest.fail(f"no {tool}; build it: ninja -C {d} tests/unit/s3/client/s3_tool")
    return tool


def data(n: int, seed: int = 0) -> bytes:
    """n deterministic pseudo-random bytes (incompressible, differs per seed)."""
    out = bytearray()
    block = hashlib.sha256(f"seed{seed}".encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block * 64  # 2 KiB per hash: fast enough for tens of MiB
    return bytes(out[:n])


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


class Tool:
    def __init__(self, binary, swift, tmp_path, endpoint=None, **overrides):
        self.binary = binary
        self.swift = swift
        self.tmp = tmp_path
        cfg = {
            "accesskey": swift.access_key, "secretkey": swift.secret_key,
            "region": swift.region, "regionendpoint": endpoint or swift.endpoint,
            "bucket": swift.bucket, "secure": False, "chunksize": 5 * MiB,
            "multipart": {"concurrency": 4},
            "retry": {"max_attempts": 5, "base_delay": 10, "max_delay": 200},
        }
        for k, v in overrides.items():
            cfg[k] = v
        self.config = tmp_path / f"s3-{uuid.uuid4().hex[:8]}.yml"
        self.config.write_text(yaml.safe_dump(cfg))

    def run(self, *args, stdin_bytes: bytes | None = None, stdin_gen=None, timeout=300):
        argv = [str(self.binary), str(self.config), *map(str, args)]
        env = dict(os.environ, S3_TOOL_LOG="info")
        if stdin_gen is None:
            r = subprocess.run(argv, input=stdin_bytes, capture_output=True, timeout=timeout,
                               env=env)
            out, err, rc = r.stdout, r.stderr, r.returncode
        else:
            p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, env=env)
            captured = {}

            def drain(name, stream):
                captured[name] = stream.read()

            readers = [threading.Thread(target=drain, args=("out", p.stdout)),
                       threading.Thread(target=drain, args=("err", p.stderr))]
            for r in readers:
                r.start()
            try:
                for chunk in stdin_gen:
                    p.stdin.write(chunk)
            except BrokenPipeError:
                pass  # the tool stopped reading (it failed); its output says why
            finally:
                p.stdin.close()
            p.wait(timeout=timeout)
            for r in readers:
                r.join()
            out, err = captured["out"], captured["err"]
            rc = p.returncode
        text = out.decode().strip().splitlines()
        result = json.loads(text[-1]) if text else {}
        return rc, result, err.decode(errors="replace")

    def ok(self, *args, **kw):
        rc, result, err = self.run(*args, **kw)
        assert rc == 0, f"s3_tool {args} failed: {err[-3000:]}"
        return result


@pytest.fixture
def tool(s3_tool, swift, tmp_path):
    return Tool(s3_tool, swift, tmp_path)


@pytest.fixture
def proxy(swift):
    p = FaultProxy("127.0.0.1", swift.port).start()
    yield p
    p.stop()


def put_file(tmp_path, content: bytes) -> pathlib.Path:
    f = tmp_path / f"body-{uuid.uuid4().hex[:8]}"
    f.write_bytes(content)
    return f


def key(name: str) -> str:
    return f"t/{uuid.uuid4().hex[:8]}/{name}"


def no_uploads(tool, prefix: str) -> bool:
    return tool.ok("ls-uploads", prefix)["uploads"] == []


# ---------------------------------------------------------------------------------------------
# Round trips

@pytest.mark.parametrize("size", [0, 1, 5 * MiB - 1, 5 * MiB + 1])
def test_put_get_round_trip(tool, swift, tmp_path, size):
    body = data(size, seed=size)
    k = key(f"obj-{size}")
    tool.ok("put", k, put_file(tmp_path, body))
    got = tool.ok("get", k, "-")
    assert got["sha256"] == sha(body)
    assert got["bytes"] == size
    assert tool.ok("head", k)["head"]["size"] == size
    # An independent client reads the same bytes.
    assert swift.client().get_object(Bucket=swift.bucket, Key=k)["Body"].read() == body


@pytest.mark.parametrize("size", [0, 1, 5 * MiB - 1, 5 * MiB + 1])
def test_multipart_round_trip(tool, swift, tmp_path, size):
    body = data(size, seed=size + 1)
    k = key(f"mpu-{size}")
    mark = swift.log_mark()
    up = tool.ok("mpu-put", k, "-", stdin_bytes=body)
    assert up["sha256"] == sha(body)
    got = tool.ok("get", k, "-", "--pause")  # the consumer pauses after every piece
    assert got["sha256"] == sha(body)
    assert got["bytes"] == size
    if size > 0:
        assert got["pauses"] >= 1
    parts = [r for r in swift.s3_requests(mark) if "partNumber=" in r.query]
    # Below one part: a single PUT; above: two parts (5 MiB + 1 byte).
    assert len(parts) == (2 if size > 5 * MiB else 0)
    assert no_uploads(tool, k)


def test_ranges(tool, tmp_path):
    body = data(3 * MiB + 7, seed=9)
    k = key("ranges")
    tool.ok("put", k, put_file(tmp_path, body))
    for spec, expect in [("0-0", body[0:1]), ("10-19", body[10:20]),
                         (f"{len(body) - 5}-", body[-5:]), ("1048576-2097151", body[MiB:2 * MiB]),
                         (f"100-{len(body) + 100}", body[100:])]:
        got = tool.ok("get", k, "-", "--range", spec)
        assert got["sha256"] == sha(expect), spec
        assert got["head"]["status"] == 206
        assert got["head"]["total_size"] == len(body)
    rc, res, err = tool.run("get", k, "-", "--range", f"{len(body) + 10}-")
    assert rc == 1
    assert res["error"]["code"] == "InvalidRange"
    assert res["error"]["status"] == 416


AWKWARD = ["a b", "plus+sign", "amp&er=sand", "per%cent", "tilde~x", "semi;colon", "comma,x",
           "dollar$at@", "quote'q", "unicode-é-日本", "double//slash", "trailing/", "star*(paren)",
           "hash#frag", "question?mark", "colon:x"]


def test_awkward_keys(tool, swift, tmp_path):
    prefix = key("awk")
    for i, name in enumerate(AWKWARD):
        body = data(100 + i, seed=i)
        k = f"{prefix}/{name}"
        tool.ok("put", k, put_file(tmp_path, body))
        assert tool.ok("get", k, "-")["sha256"] == sha(body), name
    listed = {o["key"] for o in tool.ok("ls", prefix + "/")["objects"]}
    assert listed == {f"{prefix}/{n}" for n in AWKWARD}
    # botocore agrees on the names (they were not mangled on the wire).
    resp = swift.client().list_objects_v2(Bucket=swift.bucket, Prefix=prefix + "/")
    assert {o["Key"] for o in resp["Contents"]} == listed
    # Copy and delete with an awkward key.
    src = f"{prefix}/{AWKWARD[2]}"
    tool.ok("copy", src, src + " copy")
    assert tool.ok("get", src + " copy", "-")["sha256"] == sha(data(102, seed=2))
    tool.ok("rm", src + " copy")
    rc, res, _ = tool.run("head", src + " copy")
    assert rc == 1 and res["error"]["code"] == "NotFound"


# ---------------------------------------------------------------------------------------------
# The 300 MiB parallel upload, copy, and abort

def stream_300mib(hasher):
    for i in range(300):
        chunk = data(MiB, seed=1000 + i % 7)[:MiB - i] + bytes([i % 256]) * i
        hasher.update(chunk)
        yield chunk


@pytest.fixture(scope="module")
def big_object(s3_tool, swift, tmp_path_factory):
    """300 MiB uploaded once through the parallel multipart uploader from a pipe."""
    tool = Tool(s3_tool, swift, tmp_path_factory.mktemp("big"))
    k = key("big-300")
    h = hashlib.sha256()
    mark = swift.log_mark()
    up = tool.ok("mpu-put", k, "-", stdin_gen=stream_300mib(h))
    log = swift.s3_requests(mark)
    return {"key": k, "sha256": h.hexdigest(), "upload": up, "log": log, "tool": tool}


def test_300mib_parallel_upload(big_object, swift):
    up = big_object["upload"]
    assert up["bytes"] == 300 * MiB
    assert up["sha256"] == big_object["sha256"]
    parts = [r for r in big_object["log"] if r.method == "PUT" and "partNumber=" in r.query
             and r.status == 200]
    assert len(parts) == 60  # 5 MiB parts
    # At least two UploadPart requests were in progress at the same time, per Swift's own
    # start/end timestamps (not a wall-clock threshold).
    parts.sort(key=lambda r: r.start)
    overlaps = sum(1 for a, b in zip(parts, parts[1:]) if b.start < a.end)
    assert overlaps >= 1, [(r.start, r.end) for r in parts[:8]]
    # Memory stayed bounded: (concurrency + 2) x chunksize + 64 MiB.
    assert up["peak_rss_kib"] * 1024 < (4 + 2) * 5 * MiB + 64 * MiB, up["peak_rss_kib"]
    got = big_object["tool"].ok("get", big_object["key"], "-")
    assert got["sha256"] == big_object["sha256"]
    assert got["bytes"] == 300 * MiB


def test_multipart_copy(big_object, swift):
    tool = big_object["tool"]
    dst = big_object["key"] + "-copy"
    mark = swift.log_mark()
    tool.ok("mpu-copy", big_object["key"], dst)
    copies = [r for r in swift.s3_requests(mark) if r.method == "PUT" and "partNumber=" in r.query]
    assert len(copies) == 60
    assert all(r.bytes_in == 0 for r in copies)  # server-side: no bytes went up
    assert tool.ok("get", dst, "-")["sha256"] == big_object["sha256"]
    assert no_uploads(tool, dst)


def test_parts_grow_with_the_bytes_sent_not_the_size_declared(tool, swift):
    """50 TB expected, 360 MiB sent: the parts are chunksize for the first 64 x chunksize bytes,
    then each is 1/64 of the bytes before it (rounded up to a MiB; UploadPartSizes), so what the
    uploader holds follows what it was given. S3 takes the parts of different sizes."""
    k = key("growing")
    h = hashlib.sha256()
    total = 360 * MiB

    def body():
        for i in range(total // MiB):
            chunk = data(MiB, seed=2000 + i % 5)
            h.update(chunk)
            yield chunk
    mark = swift.log_mark()
    up = tool.ok("mpu-put", k, "-", "--expected-size", 50 * 10**12, stdin_gen=body())
    parts = [r for r in swift.s3_requests(mark) if r.method == "PUT" and "partNumber=" in r.query
             and r.status == 200]
    def number(r):
        return int(r.query.split("partNumber=")[1].split("&")[0])
    sizes = [r.bytes_in for r in sorted(parts, key=number)]
    assert sum(sizes) == total
    def ceil_div(a, b):
        return -(-a // b)
    offset, expected = 0, []
    while offset < total:
        part = min(max(5 * MiB, ceil_div(ceil_div(offset, 64), MiB) * MiB), total - offset)
        expected.append(part)
        offset += part
    assert sizes == expected
    assert sizes[:64] == [5 * MiB] * 64 and max(sizes) == 6 * MiB
    assert up["part_size"] == 6 * MiB
    assert tool.ok("get", k, "-")["sha256"] == h.hexdigest()
    assert up["peak_rss_kib"] * 1024 < (4 + 2) * 6 * MiB + 64 * MiB, up["peak_rss_kib"]
    assert no_uploads(tool, k)


def test_abort_leaves_no_upload(tool, swift):
    k = key("aborted")
    res = tool.ok("mpu-put", k, "-", "--abort-after", 12 * MiB, stdin_bytes=data(20 * MiB))
    assert res["aborted_after"] >= 12 * MiB
    assert no_uploads(tool, k)
    rc, res, _ = tool.run("head", k)
    assert rc == 1 and res["error"]["code"] == "NotFound"


def test_streamed_part_with_paused_source(tool, tmp_path):
    body = data(6 * MiB + 3, seed=31)
    k = key("streamed part")
    res = tool.ok("stream-part", k, put_file(tmp_path, body))
    assert res["source_calls"] >= 3  # the source paused (every third call) and was resumed
    assert tool.ok("get", k, "-")["sha256"] == sha(body)
    assert no_uploads(tool, k)


def test_listings_follow_pages(tool, swift, tmp_path):
    prefix = key("pages")
    for i in range(5):
        tool.ok("put", f"{prefix}/o{i}", put_file(tmp_path, b"x" * i))
    mark = swift.log_mark()
    objects = tool.ok("ls", prefix + "/", "--page-size", 2)["objects"]
    assert [o["key"] for o in objects] == [f"{prefix}/o{i}" for i in range(5)]
    assert [o["size"] for o in objects] == list(range(5))
    lists = [r for r in swift.s3_requests(mark) if "list-type=2" in r.query]
    assert len(lists) == 3  # 2 + 2 + 1
    ids = sorted(tool.ok("create-mpu", f"{prefix}/u{i}")["upload_id"] for i in range(3))
    mark = swift.log_mark()
    uploads = tool.ok("ls-uploads", prefix + "/", "--page-size", 2)["uploads"]
    assert sorted(u["upload_id"] for u in uploads) == ids
    assert len([r for r in swift.s3_requests(mark) if "uploads" in r.query]) == 2
    for u in uploads:
        tool.ok("abort-mpu", u["key"], u["upload_id"])
    assert no_uploads(tool, prefix + "/")


def test_list_parts_and_abort_by_id(tool, tmp_path):
    k = key("manual")
    upload_id = tool.ok("create-mpu", k)["upload_id"]
    assert [u["upload_id"] for u in tool.ok("ls-uploads", k)["uploads"]] == [upload_id]
    assert tool.ok("list-parts", k, upload_id)["parts"] == []
    tool.ok("abort-mpu", k, upload_id)
    assert no_uploads(tool, k)
    tool.ok("abort-mpu", k, upload_id)  # already gone: still success


# ---------------------------------------------------------------------------------------------
# Credentials and signing

@pytest.mark.parametrize("field,value,codes", [
    ("secretkey", "wrong-secret", {"SignatureDoesNotMatch"}),
    ("accesskey", "test:nobody", {"InvalidAccessKeyId", "AccessDenied", "SignatureDoesNotMatch"}),
])
def test_wrong_credentials_one_request_clear_error(s3_tool, swift, tmp_path, field, value, codes):
    bad = Tool(s3_tool, swift, tmp_path, **{field: value})
    k = key("creds")
    mark = swift.log_mark()
    rc, res, err = bad.run("get", k, "-")
    assert rc == 1
    assert res["error"]["code"] in codes
    assert res["error"]["status"] == 403
    assert res["error"]["code"] in err  # the operator sees the S3 code
    assert len([r for r in swift.s3_requests(mark) if k in r.path]) == 1  # no retry storm


def test_credentials_from_aws_environment(s3_tool, swift, tmp_path, monkeypatch):
    t = Tool(s3_tool, swift, tmp_path, accesskey="", secretkey="")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", swift.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", swift.secret_key)
    k = key("env-creds")
    t.ok("put", k, put_file(tmp_path, b"x"))
    assert t.ok("get", k, "-")["sha256"] == sha(b"x")


@pytest.mark.parametrize("keyid", ["", "alias/drayage"])
def test_encryption_headers_reach_s3(s3_tool, swift, tmp_path, keyid):
    # Swift's s3api refuses server-side encryption with 501 NotImplemented: proof that the
    # header went out, and a 5xx that is not transient is not retried.
    enc = Tool(s3_tool, swift, tmp_path, encrypt=True, keyid=keyid)
    k = key("encrypted")
    mark = swift.log_mark()
    rc, res, _ = enc.run("put", k, put_file(tmp_path, b"secret"))
    assert rc == 1
    assert res["error"]["code"] == "NotImplemented"
    assert res["error"]["status"] == 501
    assert len([r for r in swift.s3_requests(mark) if k in r.path]) == 1


def test_sigv2_round_trip(s3_tool, swift, tmp_path):
    v2 = Tool(s3_tool, swift, tmp_path, v4auth=False)
    body = data(7 * MiB, seed=22)
    k = key("sig v2+key")
    v2.ok("put", k, put_file(tmp_path, body[:1000]))
    assert v2.ok("get", k, "-")["sha256"] == sha(body[:1000])
    v2.ok("mpu-put", k + "-mpu", "-", stdin_bytes=body)
    assert v2.ok("get", k + "-mpu", "-", "--range", "5-")["sha256"] == sha(body[5:])
    assert v2.ok("ls", k)["objects"]
    bad = Tool(s3_tool, swift, tmp_path, v4auth=False, secretkey="nope")
    rc, res, _ = bad.run("get", k, "-")
    assert rc == 1 and res["error"]["code"] == "SignatureDoesNotMatch"


# ---------------------------------------------------------------------------------------------
# Faults (through the fault proxy)

def test_slowdown_on_a_share_of_requests(s3_tool, swift, proxy, tmp_path):
    t = Tool(s3_tool, swift, tmp_path, endpoint=proxy.endpoint,
             retry={"max_attempts": 10, "base_delay": 5, "max_delay": 50})
    proxy.set_rules([Rule("slowdown", share=0.3)])
    body = data(23 * MiB, seed=5)
    k = key("slow")
    t.ok("mpu-put", k, "-", stdin_bytes=body)
    assert t.ok("get", k, "-")["sha256"] == sha(body)
    small = data(1000, seed=6)
    t.ok("put", k + "-small", put_file(tmp_path, small))
    assert t.ok("get", k + "-small", "-")["sha256"] == sha(small)
    t.ok("mpu-copy", k, k + "-copy")
    assert t.ok("get", k + "-copy", "-")["sha256"] == sha(body)
    assert proxy.stats["slowdown"] >= 3  # faults really were injected
    proxy.clear()
    assert no_uploads(t, k)


def test_retries_run_out_with_a_clear_error(s3_tool, swift, proxy, tmp_path):
    t = Tool(s3_tool, swift, tmp_path, endpoint=proxy.endpoint,
             retry={"max_attempts": 3, "base_delay": 5, "max_delay": 20})
    body = data(12 * MiB, seed=8)
    k = key("gives-up")
    # Every UploadPart answers SlowDown: the upload fails and is aborted.
    proxy.set_rules([Rule("slowdown", match="partNumber=")])
    rc, res, err = t.run("mpu-put", k, "-", stdin_bytes=body)
    assert rc == 1
    assert res["error"]["code"] == "SlowDown"
    assert "gave up after 3 attempts" in res["error"]["message"]
    proxy.clear()
    assert no_uploads(t, k)
    # Same with a producer that is paused (memory budget reached) when the failure comes: it is
    # woken, stops, and gets the error instead of waiting forever.
    proxy.set_rules([Rule("slowdown", match="partNumber=")])
    rc, res, err = t.run("mpu-put", k + "-paused", "-",
                         stdin_gen=(data(MiB, seed=i) for i in range(80)))
    assert rc == 1
    assert res["error"]["code"] == "SlowDown"
    proxy.clear()
    assert no_uploads(t, k + "-paused")
    # A GET that is always refused: exactly max_attempts requests.
    t.ok("put", k, put_file(tmp_path, b"abc"))
    proxy.set_rules([Rule("slowdown", match="GET ")])
    before = proxy.stats["slowdown"]
    rc, res, _ = t.run("get", k, "-")
    assert rc == 1 and res["error"]["code"] == "SlowDown"
    assert proxy.stats["slowdown"] - before == 3


def test_reset_mid_response_body_resumes_get(s3_tool, swift, proxy, tmp_path):
    t = Tool(s3_tool, swift, tmp_path, endpoint=proxy.endpoint)
    body = data(40 * MiB, seed=11)
    k = key("reset-get")
    t.ok("mpu-put", k, "-", stdin_bytes=body)
    proxy.set_rules([Rule("reset_response", match="GET ", after=7 * MiB + 123, times=2)])
    mark = swift.log_mark()
    got = t.ok("get", k, "-")
    assert got["sha256"] == sha(body)
    assert got["bytes"] == len(body)
    assert proxy.stats["reset_response"] == 2
    gets = [r for r in swift.s3_requests(mark) if r.method == "GET"]
    assert len(gets) == 3  # the first attempt and two resumptions
    # Ranged GETs work through resets too.
    proxy.set_rules([Rule("reset_response", match="GET ", after=MiB, times=1)])
    got = t.ok("get", k, "-", "--range", f"{3 * MiB}-{9 * MiB}")
    assert got["sha256"] == sha(body[3 * MiB:9 * MiB + 1])


def test_reset_mid_request_body_retries_part(s3_tool, swift, proxy, tmp_path):
    t = Tool(s3_tool, swift, tmp_path, endpoint=proxy.endpoint)
    body = data(17 * MiB, seed=12)
    k = key("reset-put")
    proxy.set_rules([Rule("reset_request", match="partNumber=", after=2 * MiB, times=3),
                     Rule("reset_request", match="PUT ", after=100, times=1)])
    t.ok("mpu-put", k, "-", stdin_bytes=body)
    t.ok("put", k + "-small", put_file(tmp_path, body[:300_000]))
    assert proxy.stats["reset_request"] == 4
    proxy.clear()
    assert t.ok("get", k, "-")["sha256"] == sha(body)
    assert t.ok("get", k + "-small", "-")["sha256"] == sha(body[:300_000])
    assert no_uploads(t, k)


def test_stalled_connection_is_abandoned_and_retried(s3_tool, swift, proxy, tmp_path):
    t = Tool(s3_tool, swift, tmp_path, endpoint=proxy.endpoint, stall_timeout=1000)
    body = data(6 * MiB, seed=13)
    k = key("stall")
    t.ok("put", k, put_file(tmp_path, body))
    proxy.set_rules([Rule("stall_response", match="GET ", after=MiB, times=1)])
    got = t.ok("get", k, "-")
    assert got["sha256"] == sha(body)
    assert proxy.stats["stall_response"] == 1
    # A stall on every attempt: a clear transport error once attempts run out.
    t2 = Tool(s3_tool, swift, tmp_path, endpoint=proxy.endpoint, stall_timeout=1000,
              retry={"max_attempts": 2, "base_delay": 5, "max_delay": 20})
    proxy.set_rules([Rule("stall_response", match="GET ", after=0)])
    rc, res, _ = t2.run("get", k, "-")
    assert rc == 1
    assert res["error"]["code"] == "transport"
    assert "curl 28" in res["error"]["message"]
