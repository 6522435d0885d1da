"""The HTTP/1.1 server (src/http) over real loopback sockets, against http_test_server.

Raw sockets where the wire matters (pipelining, limits, timeouts, garbage), curl where a real
client is the point. Memory bounds are checked with the server's peak RSS (VmHWM).
"""
import hashlib
import json
import random
import socket
import subprocess
import time

import pytest

from harness.http_server import (PATTERN, PATTERN_PERIOD, HttpTestServer, Reader, Response,
                                 binary, metric, request)
from harness.net import peak_rss_kib, wait_until

GiB = 1 << 30
MiB = 1 << 20
RSS_LIMIT_KIB = 64 * 1024


@pytest.fixture
def http_server(tmp_path):
    """Factory: starts http_test_server with the given limits; stops them all afterwards."""
    if not binary().exists():
        pytest.fail(f"{binary()} missing; build it: ninja -C $DRAYAGE_BUILD_DIR "
                    "tests/unit/http/http_test_server")
    started = []

    def start(**options) -> HttpTestServer:
        s = HttpTestServer(tmp_path / f"srv{len(started)}", **options).start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def pattern_ok(data: bytes, offset: int) -> bool:
    step = 2 * MiB  # PATTERN is a little over 4 MiB long
    for i in range(0, len(data), step):
        o = (offset + i) % PATTERN_PERIOD
        piece = data[i:i + step]
        if piece != PATTERN[o:o + len(piece)]:
            return False
    return True


def read_source_body(sock: socket.socket, reader: Reader, total: int, pace=None,
                     offset: int = 0) -> int:
    """Reads body bytes up to offset `total` (starting at `offset`), checking the i % 251
    pattern; returns the offset reached."""
    got = offset
    pending = reader.buf
    reader.buf = b""
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    while got < total:
        if pending:
            data, pending = pending[:total - got], b""
        else:
            want = min(len(buf), total - got) if pace is None else min(pace[0], total - got)
            n = sock.recv_into(view[:want])
            if n == 0:
                break
            data = bytes(view[:n])
            if pace is not None:
                time.sleep(pace[1])
        assert pattern_ok(data, got), f"wrong bytes at offset {got}"
        got += len(data)
    return got


# --- keep-alive, pipelining, HEAD, 100-continue ------------------------------------------

def test_keep_alive_serves_several_requests_on_one_connection(http_server):
    srv = http_server()
    with srv.connect() as s:
        r = Reader(s)
        for i in range(3):
            s.sendall(request("GET", f"/echo?n={i}"))
            resp = r.response()
            assert resp.status == 200
            assert resp.body == f"/echo?n={i}".encode()
            assert resp.header("Connection") is None
        s.sendall(request("GET", "/v2/", {"Connection": "close"}))
        resp = r.response()
        assert resp.status == 200 and resp.body == b"{}"
        assert resp.header("Connection") == "close"
        assert r.closed()


def test_pipelined_requests_are_answered_in_order(http_server):
    srv = http_server()
    with srv.connect() as s:
        # Bodies and a streamed response in the middle: nothing may overtake.
        batch = b"".join([
            request("GET", "/echo?i=0"),
            request("POST", "/sink", body=b"x" * 100_000),
            request("GET", "/source?bytes=300000&chunked=1"),
            request("HEAD", "/source?bytes=5"),
            request("GET", "/echo?i=4"),
        ])
        s.sendall(batch)
        r = Reader(s)
        a = r.response()
        assert a.body == b"/echo?i=0"
        b = r.response()
        assert json.loads(b.body) == {"bytes": 100_000,
                                      "sha256": hashlib.sha256(b"x" * 100_000).hexdigest()}
        c = r.response()
        assert len(c.body) == 300_000 and pattern_ok(c.body, 0)
        d = r.response(head_request=True)
        assert d.header("Content-Length") == "5"
        e = r.response()
        assert e.body == b"/echo?i=4"


def test_head_keeps_content_length_and_sends_no_body(http_server):
    srv = http_server()
    with srv.connect() as s:
        r = Reader(s)
        s.sendall(request("HEAD", "/source?bytes=123456"))
        resp = r.response(head_request=True)
        assert resp.status == 200
        assert resp.header("Content-Length") == "123456"
        # Had a body been sent, this would parse garbage instead of the next response.
        s.sendall(request("GET", "/echo?after-head"))
        assert r.response().body == b"/echo?after-head"


def test_expect_100_continue_only_when_the_body_is_read(http_server):
    srv = http_server()
    body = b"0123456789" * 1000
    with srv.connect() as s:
        r = Reader(s)
        s.sendall(request("PUT", "/sink", {"Expect": "100-continue",
                                           "Content-Length": str(len(body))}))
        interim = r.response()
        assert interim.status == 100
        s.sendall(body)
        final = r.response()
        assert final.status == 200
        assert json.loads(final.body)["sha256"] == hashlib.sha256(body).hexdigest()
        # A route that answers without reading: no 100, a final status, then close (RFC 9110
        # 10.1.1), since the unread body cannot be told apart from a next request.
        s.sendall(request("PUT", "/v2/", {"Expect": "100-continue",
                                          "Content-Length": str(len(body))}))
        resp = r.response()
        assert resp.status == 200
        assert resp.header("Connection") == "close"
        assert r.closed()


def test_curl_upload_with_expect_and_download(http_server, tmp_path):
    srv = http_server()
    blob = tmp_path / "blob"
    blob.write_bytes(random.Random(1).randbytes(3 * MiB))
    out = subprocess.run(
        ["curl", "-sS", "--fail", "-H", "Expect: 100-continue", "-T", str(blob),
         f"http://127.0.0.1:{srv.port}/sink"], capture_output=True, check=True, timeout=60)
    assert json.loads(out.stdout) == {"bytes": 3 * MiB,
                                      "sha256": hashlib.sha256(blob.read_bytes()).hexdigest()}
    out = subprocess.run(["curl", "-sS", "--fail", f"http://127.0.0.1:{srv.port}/source?bytes=5000000"],
                         capture_output=True, check=True, timeout=60)
    assert len(out.stdout) == 5_000_000 and pattern_ok(out.stdout, 0)


# --- streaming with bounded memory ---------------------------------------------------------

def test_2gib_request_body_streams_with_bounded_memory(http_server):
    srv = http_server()
    total = 2 * GiB
    block = random.Random(2).randbytes(4 * MiB)
    expected = hashlib.sha256()
    with srv.connect(timeout=120) as s:
        s.sendall(request("PUT", "/sink", {"Content-Length": str(total)}))
        sent = 0
        while sent < total:
            s.sendall(block)
            expected.update(block)
            sent += len(block)
        resp = Reader(s).response()
    assert resp.status == 200
    assert json.loads(resp.body) == {"bytes": total, "sha256": expected.hexdigest()}
    assert peak_rss_kib(srv.pid) < RSS_LIMIT_KIB


def test_2gib_response_streams_with_bounded_memory(http_server):
    srv = http_server()
    total = 2 * GiB
    with srv.connect(timeout=120) as s:
        s.sendall(request("GET", f"/source?bytes={total}"))
        r = Reader(s)
        status, _, headers = r.head()
        assert status == 200 and ("Content-Length", str(total)) in headers
        assert read_source_body(s, r, total) == total
    assert peak_rss_kib(srv.pid) < RSS_LIMIT_KIB


def test_slow_reader_keeps_server_memory_bounded(http_server):
    srv = http_server()
    total = 96 * MiB
    with srv.connect() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.sendall(request("GET", f"/source?bytes={total}"))
        r = Reader(s)
        assert r.head()[0] == 200
        # ~64 KiB per 2 ms at most: the server must hold the rest back, not buffer it.
        assert read_source_body(s, r, total, pace=(64 * 1024, 0.002)) == total
    assert peak_rss_kib(srv.pid) < RSS_LIMIT_KIB


def test_paused_body_pushes_back_on_the_client(http_server):
    """A sink consuming 100 kB/s: the client can queue only socket buffers' worth, not 256 MiB."""
    # The paused exchange never finishes; a short grace keeps the teardown quick.
    srv = http_server(grace_ms=200)
    with srv.connect() as s:
        s.sendall(request("PUT", "/sink?rate=100000", {"Content-Length": str(256 * MiB)}))
        s.setblocking(False)
        chunk = b"z" * MiB
        accepted = 0
        for _ in range(3):  # three rounds of "write until the kernel says stop"
            while True:
                try:
                    accepted += s.send(chunk)
                except BlockingIOError:
                    break
            time.sleep(0.3)
        assert accepted < 48 * MiB, accepted
        # Others are served meanwhile.
        with srv.connect() as other:
            other.sendall(request("GET", "/v2/"))
            assert Reader(other).response().status == 200
    assert peak_rss_kib(srv.pid) < RSS_LIMIT_KIB


def test_rate_limited_sink_gets_every_byte(http_server):
    srv = http_server()
    body = random.Random(3).randbytes(2 * MiB)
    with srv.connect() as s:
        s.sendall(request("PUT", "/sink?rate=4000000", body=body))
        resp = Reader(s).response()
    assert json.loads(resp.body) == {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def test_client_disconnects_mid_transfer(http_server):
    srv = http_server()
    s = srv.connect()
    s.sendall(request("PUT", "/sink", {"Content-Length": str(GiB)}) + b"a" * (8 * MiB))
    s.close()
    d = srv.connect()
    d.sendall(request("GET", f"/source?bytes={GiB}"))
    d.recv(MiB)
    d.close()
    with srv.connect() as s2:
        s2.sendall(request("GET", "/v2/"))
        assert Reader(s2).response().status == 200
        wait_until(lambda: metric(srv, "drayage_http_open_connections") == 2,
                   "aborted connections reaped")
    assert srv.alive()


@pytest.mark.parametrize("version,chunked", [("1.1", False), ("1.1", True), ("1.0", True)])
def test_aborted_response_ends_with_a_reset(http_server, version, chunked):
    """A response cut mid-way (its source failed: Exchange::abort) ends with RST, never with the
    FIN that ends a whole one; for HTTP/1.0 with no length the FIN would pass for the end."""
    srv = http_server()
    target = f"/source?bytes={MiB}&abort_at={256 * 1024}" + ("&chunked=1" if chunked else "")
    with srv.connect() as s:
        s.sendall(f"GET {target} HTTP/{version}\r\nHost: x\r\n\r\n".encode())
        received = 0
        with pytest.raises(ConnectionResetError):
            while data := s.recv(1 << 16):
                received += len(data)
        assert received < MiB
    assert srv.alive()


# --- limits ------------------------------------------------------------------------------

def expect_error_and_close(srv, payload: bytes, status: int) -> Response:
    with srv.connect() as s:
        s.sendall(payload)
        r = Reader(s)
        resp = r.response()
        assert resp.status == status, resp
        assert resp.header("Connection") == "close"
        assert r.closed()
        return resp


def test_request_line_too_long_is_414(http_server):
    srv = http_server(max_request_line=1024)
    resp = expect_error_and_close(srv, request("GET", "/v2/" + "a" * 2000), 414)
    # On /v2/ the server's own errors are Registry API error bodies.
    assert json.loads(resp.body)["errors"][0]["code"] == "UNSUPPORTED"
    assert resp.header("Content-Type") == "application/json"
    resp = expect_error_and_close(srv, request("GET", "/x" + "a" * 2000), 414)
    assert resp.body.startswith(b"414 ")


def test_header_limits_are_431(http_server):
    srv = http_server(max_header_bytes=4096, max_headers=20)
    expect_error_and_close(srv, request("GET", "/", {"X-Big": "b" * 5000}), 431)
    many = {f"X-H{i}": "v" for i in range(25)}
    expect_error_and_close(srv, request("GET", "/", many), 431)
    # Just under the limits is fine.
    with srv.connect() as s:
        s.sendall(request("GET", "/echo", {f"X-H{i}": "v" for i in range(15)}))
        assert Reader(s).response().status == 200


def test_body_limit_is_413(http_server):
    srv = http_server()
    # Known length over the route limit: refused before any body byte is read.
    resp = expect_error_and_close(
        srv, request("PUT", "/limited", {"Content-Length": str(2 * MiB)}), 413)
    assert resp.body.startswith(b"413 ")
    # Chunked: refused when the limit is crossed, while the client is still sending.
    with srv.connect() as s:
        s.sendall(request("PUT", "/limited", {"Transfer-Encoding": "chunked"}))
        chunk = b"100000\r\n" + b"c" * 0x100000 + b"\r\n"
        r = Reader(s)
        try:
            for _ in range(3):
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        resp = r.response()
        assert resp.status == 413
        assert r.closed()
    # Within the limit it is served.
    with srv.connect() as s:
        s.sendall(request("PUT", "/limited", body=b"k" * MiB))
        assert Reader(s).response().status == 200


def test_global_body_limit_on_v2_is_a_registry_error(http_server):
    srv = http_server(max_body=1000)
    resp = expect_error_and_close(srv, request("PUT", "/v2/x/blobs/uploads/1",
                                               {"Content-Length": "5000"}), 413)
    assert json.loads(resp.body)["errors"][0]["code"] == "SIZE_INVALID"


def test_slowloris_head_gets_408(http_server):
    srv = http_server(header_timeout_ms=500)
    with srv.connect() as s:
        s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
        s.sendall(b"X-Slow: 1\r\n")
        r = Reader(s)
        resp = r.response()
        assert resp.status == 408
        assert r.closed()


def test_idle_keep_alive_connection_is_closed_silently(http_server):
    srv = http_server(idle_timeout_ms=300)
    with srv.connect() as s:
        s.sendall(request("GET", "/echo"))
        r = Reader(s)
        assert r.response().status == 200
        assert s.recv(100) == b""  # no 408, just the close


def test_stalled_body_gets_408(http_server):
    srv = http_server(body_timeout_ms=500)
    with srv.connect() as s:
        s.sendall(request("PUT", "/sink", {"Content-Length": "1000"}) + b"only some")
        r = Reader(s)
        resp = r.response()
        assert resp.status == 408
        assert r.closed()


def test_client_that_reads_nothing_is_cut_off(http_server):
    srv = http_server(send_timeout_ms=500)
    s = srv.connect()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    s.sendall(request("GET", f"/source?bytes={GiB}"))
    wait_until(lambda: metric(srv, "drayage_http_open_connections") == 1,
               "send timeout to close the connection")
    got = 0
    try:
        while True:
            data = s.recv(1 << 20)
            if not data:
                break
            got += len(data)
    except ConnectionResetError:
        pass
    s.close()
    assert got < GiB


def test_max_connections_accepts_and_closes_the_excess(http_server):
    srv = http_server(max_connections=2)

    def served(sock) -> bool:
        try:
            sock.sendall(request("GET", "/echo"))
            return Reader(sock).response().status == 200
        except (ConnectionError, OSError):
            return False

    # Fill both slots with served connections. Until the start-up probe has been reaped an
    # attempt may be refused; refused attempts do not count, so retry.
    held = []

    def fill():
        s = srv.connect()
        if served(s):
            held.append(s)
        else:
            s.close()
        return len(held) == 2
    wait_until(fill, "two connections to be served")
    c = srv.connect()
    assert Reader(c).closed()  # accepted and closed at once, nothing sent
    c.close()
    held[0].close()

    def third_served():
        with srv.connect() as d:
            return served(d)
    wait_until(third_served, "a slot to free up")
    held[1].close()


# --- malformed input -----------------------------------------------------------------------

@pytest.mark.parametrize("payload", [
    b"\x00\x01\x02\x03\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nBad header line\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd",
    b"POST /sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nnothex\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length : 3\r\n\r\nabc",
    # What http-parser's lenient build accepts: obs-fold, bare LF, NUL, CR without LF, a bent
    # version literal, chunk data not followed by CRLF.
    b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n 5\r\n\r\nhello",
    b"GET / HTTP/1.1\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\nX-A: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n\rX",
    b"GET / HTTX/1.1\r\nHost: x\r\n\r\n",
    b"POST /sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXY0\r\n\r\n",
])
def test_malformed_requests_get_400(http_server, payload):
    srv = http_server()
    expect_error_and_close(srv, payload, 400)
    assert srv.alive()


def test_unknown_transfer_coding_is_501(http_server):
    srv = http_server()
    expect_error_and_close(srv, request("POST", "/sink", {"Transfer-Encoding": "gzip, chunked"}),
                           501)


def test_random_garbage_never_crashes_or_hangs(http_server):
    srv = http_server(header_timeout_ms=2000)
    rng = random.Random(4)
    seeds = [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
             b"POST /sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"]
    for i in range(150):
        base = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            pos = rng.randrange(len(base))
            base[pos] = rng.randrange(256)
        with srv.connect(timeout=10) as s:
            s.sendall(bytes(base))
            s.shutdown(socket.SHUT_WR)
            data = b""
            try:
                while chunk := s.recv(65536):
                    data += chunk
            except ConnectionResetError:
                pass
        # Either it still parsed as a request, or it is a clean 4xx/5xx; never silence mid-way
        # after a complete head, never a crash.
        if data:
            assert data.startswith(b"HTTP/1.1 "), data[:100]
    assert srv.alive()
    with srv.connect() as s:
        s.sendall(request("GET", "/v2/"))
        assert Reader(s).response().status == 200


# --- graceful shutdown ---------------------------------------------------------------------

def test_sigterm_lets_transfers_finish_and_refuses_new_connections(http_server):
    srv = http_server(grace_ms=20000)
    total = 256 * MiB
    idle = srv.connect()
    idle.sendall(request("GET", "/echo"))
    idle_reader = Reader(idle)
    assert idle_reader.response().status == 200
    busy = srv.connect()
    busy.sendall(request("GET", f"/source?bytes={total}"))
    r = Reader(busy)
    assert r.head()[0] == 200
    assert read_source_body(busy, r, MiB) == MiB

    srv.terminate()

    def refused():
        try:
            socket.create_connection(("127.0.0.1", srv.port), timeout=5).close()
            return False
        except ConnectionRefusedError:
            return True
        except ConnectionResetError:
            # Let into the accept queue as the listener closed, and reset with it: the next
            # attempt meets no listener.
            return False
    wait_until(refused, "the listener to close")
    assert idle_reader.closed()  # idle keep-alive connection closed at once
    assert read_source_body(busy, r, total, offset=MiB) == total
    assert r.closed()
    busy.close()
    idle.close()
    assert srv.proc.wait(timeout=30) == 0


# --- metrics -------------------------------------------------------------------------------

def test_metrics_count_requests_and_bytes(http_server):
    srv = http_server()
    with srv.connect() as s:
        r = Reader(s)
        for _ in range(3):
            s.sendall(request("GET", "/echo"))
            assert r.response().status == 200
        s.sendall(request("PUT", "/sink", body=b"b" * 50_000))
        assert r.response().status == 200
    expect_error_and_close(srv, b"\x00garbage\r\n\r\n", 400)
    with srv.connect() as s:
        s.sendall(request("GET", "/metrics", {"Connection": "close"}))
        text = Reader(s).response().body.decode()
    series = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            series[name] = float(value)
    assert series['drayage_http_requests_total{method="GET",status="200"}'] == 3
    assert series['drayage_http_requests_total{method="PUT",status="200"}'] == 1
    assert series['drayage_http_requests_total{method="-",status="400"}'] == 1
    assert series["drayage_http_bytes_received_total"] > 50_000
    assert series["drayage_http_bytes_sent_total"] > 0
    assert series["drayage_http_open_connections"] >= 1
