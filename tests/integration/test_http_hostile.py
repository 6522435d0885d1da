"""drayage's HTTP layer under hostile conditions (docs/reliability.md): running out of file
descriptors, and HTTP/1.0 clients of a blob whose length is not known and whose digest fails.

Requests the parser refuses (obs-fold, bare LF, smuggling shapes) are tested against
http_test_server in test_http_server.py and in tests/unit/http/parser_test.cpp.
"""
import hashlib
import http.server
import json
import socket
import threading
import time

import pytest
import requests

from harness.drayage import Drayage
from harness.net import cpu_seconds, wait_until

MiB = 1 << 20


def nofile_limits(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError("no open-files line in /proc/<pid>/limits")


def log_text(d: Drayage) -> str:
    """The log as it is now (Drayage.log() waits for the file to stop growing, which a spinning
    process never lets happen)."""
    return d.log_path.read_text(errors="replace")


def answers_healthz(d: Drayage) -> bool:
    try:
        return requests.get(d.url + "/healthz", timeout=5).status_code == 200
    except requests.RequestException:
        return False


# --- out of file descriptors ------------------------------------------------------------------

def test_out_of_descriptors_pauses_accepting_instead_of_spinning(drayage_factory):
    limit = 128
    # Workers on: each hit worker has a listener of its own on the same port (SO_REUSEPORT).
    d = drayage_factory({"http": {"workers": 1,
                                  "limits": {"header_timeout": "120s", "idle_timeout": "120s"}}},
                        nofile=(limit, limit))
    pid = d.proc.pid
    idle = []
    try:
        # More idle connections than descriptors: the kernel completes them all into the
        # listeners' backlogs; drayage accepts until accept() fails with EMFILE.
        for _ in range(limit + 40):
            idle.append(socket.create_connection(("127.0.0.1", d.port), timeout=10))
        wait_until(lambda: "Too many open files" in log_text(d), "accept() to run out")
        before = cpu_seconds(pid)
        time.sleep(3)
        used = cpu_seconds(pid) - before
        assert used < 0.5, f"drayage used {used:.2f} s of CPU in 3 s while out of descriptors"
    finally:
        for s in idle:
            s.close()
    # Descriptors free up as the idle connections close: new ones are accepted again.
    wait_until(lambda: answers_healthz(d), "drayage to answer again")
    assert d.metric("drayage_http_accept_paused_total") >= 1
    lines = [line for line in d.log().splitlines() if "Too many open files" in line]
    assert len(lines) == 1, f"{len(lines)} lines, e.g. {lines[:3]}"


def test_soft_open_files_limit_is_raised_to_the_hard_one(drayage_factory):
    # The default max_connections (4096) does not fit under 1024: the operator is told so.
    d = drayage_factory({}, nofile=(256, 1024))
    assert nofile_limits(d.proc.pid) == (1024, 1024)
    wait_until(lambda: "open-files limit 1024 is below" in log_text(d), "the start-up warning")
    # 500 connections and the rest of the process fit: raised, no warning.
    fits = drayage_factory({"http": {"limits": {"max_connections": 500}}}, name="fits",
                           nofile=(256, 1024))
    assert nofile_limits(fits.proc.pid) == (1024, 1024)
    assert answers_healthz(fits)
    assert "open-files limit raised from 256 to 1024" in fits.log()
    assert "is below" not in fits.log()


# --- HTTP/1.0 and a blob of unknown length that fails its digest ------------------------------

class ChunkedLiar:
    """An upstream registry that sends every blob chunked (no Content-Length) with bytes that do
    not hash to the digest asked for: a fault no real registry can be made to produce."""

    def __init__(self, size: int):
        self.blob_gets = 0
        liar = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):  # drayage's repository proof: the blob exists
                self.send_response(200 if "/blobs/" in self.path else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self):
                if "/blobs/" not in self.path:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                liar.blob_gets += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                piece = b"w" * (64 * 1024)
                for _ in range(size // len(piece)):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def liar():
    upstream = ChunkedLiar(4 * MiB)
    yield upstream
    upstream.close()


def get_raw(port: int, target: str, version: str) -> tuple[bytes, bool]:
    """GET over a raw socket; returns everything received and whether it ended with a reset."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"GET {target} HTTP/{version}\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        try:
            while chunk := s.recv(1 << 16):
                data += chunk
        except ConnectionResetError:
            return data, True
    return data, False


def test_http10_gets_no_close_delimited_blob_that_could_fail(drayage_factory, liar):
    digest = "sha256:" + hashlib.sha256(b"r" * 4 * MiB).hexdigest()
    d = drayage_factory({"upstream": {"url": liar.url}})
    data, reset = get_raw(d.port, f"/v2/lib/x/blobs/{digest}", "1.0")
    assert liar.blob_gets >= 1
    head, _, body = data.partition(b"\r\n\r\n")
    # No length to frame the body with, and the bytes not verified yet: refused before any of it
    # (never 200 and a clean close after a body that only looks complete).
    assert head.startswith(b"HTTP/1.1 503 "), (head, reset)
    assert json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"


def test_http11_blob_failing_its_digest_ends_with_a_reset(drayage_factory, liar):
    digest = "sha256:" + hashlib.sha256(b"r" * 4 * MiB).hexdigest()
    d = drayage_factory({"upstream": {"url": liar.url}})
    data, reset = get_raw(d.port, f"/v2/lib/x/blobs/{digest}", "1.1")
    assert liar.blob_gets >= 1
    if data.startswith(b"HTTP/1.1 200 "):
        # Streamed chunked while it was being verified: the cut is a reset, not a last chunk.
        assert reset, "the cut transfer ended with an orderly close"
        assert not data.endswith(b"\r\n0\r\n\r\n")
    else:
        assert data.startswith(b"HTTP/1.1 5"), data[:200]  # failed before the head went out
