"""drayage's HTTP layer under hostile conditions (docs/reliability.md): HTTP/1.0 clients of a
blob whose length is not known and whose digest fails.

Requests the parser refuses (obs-fold, bare LF, smuggling shapes) are tested against
http_test_server in test_http_server.py and in tests/unit/http/parser_test.cpp.
"""
import hashlib
import http.server
import json
import socket
import threading

import pytest

MiB = 1 << 20


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
