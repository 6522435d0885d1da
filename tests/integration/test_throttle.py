"""The limited path of the tests and bench/ (harness/throttle.py, throttle_proxy.cpp): bytes pass
intact both ways, the rate and the delay hold as lower bounds (the machine can only make a
transfer slower, so no upper bound is asserted), connections are counted, and a peer's reset
reaches the other side as a reset.
"""
import hashlib
import os
import socket
import struct
import threading
import time

import pytest

from harness.net import wait_until

MiB = 1 << 20


class Origin:
    """A TCP origin on 127.0.0.1: each connection reads `request` bytes, answers their sha256
    (32 bytes) and then `reply` bytes of a seeded pattern, and closes; or, with `reset_after`,
    sends that many bytes of the reply and resets the connection."""

    def __init__(self, reply: bytes = b"", reset_after: int | None = None):
        self.reply = reply
        self.reset_after = reset_after
        self.accepted = 0
        self.received_digests: list[bytes] = []
        self.peer_errors: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket):
        with conn:
            try:
                (length,) = struct.unpack("!Q", recv_exactly(conn, 8))
                digest = hashlib.sha256(recv_exactly(conn, length)).digest()
                self.received_digests.append(digest)
                conn.sendall(digest)
                if self.reset_after is not None:
                    conn.sendall(self.reply[:self.reset_after])
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                conn.sendall(self.reply)
            except OSError as e:
                self.peer_errors.append(repr(e))

    def close(self):
        self.sock.close()


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        part = sock.recv(min(n - len(buf), 1 << 20))
        if not part:
            raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
        buf += part
    return bytes(buf)


def recv_all(sock: socket.socket) -> bytes:
    buf = bytearray()
    while part := sock.recv(1 << 20):
        buf += part
    return bytes(buf)


def exchange(port: int, request: bytes) -> tuple[bytes, bytes]:
    """Sends `request` (length-prefixed), half-closes, returns (digest, reply) read to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(struct.pack("!Q", len(request)) + request)
        s.shutdown(socket.SHUT_WR)
        digest = recv_exactly(s, 32)
        return digest, recv_all(s)


@pytest.fixture
def origin_factory():
    made = []

    def make(**kw) -> Origin:
        made.append(Origin(**kw))
        return made[-1]

    yield make
    for o in made:
        o.close()


def test_bytes_pass_intact_both_ways(origin_factory, throttle_factory):
    reply = os.urandom(5 * MiB + 123)
    request = os.urandom(3 * MiB + 7)
    origin = origin_factory(reply=reply)
    t = throttle_factory(origin.port, rate=100e6, delay_ms=2)
    digest, got = exchange(t.port, request)
    assert digest == hashlib.sha256(request).digest()
    assert origin.received_digests == [digest]
    assert len(got) == len(reply) and got == reply
    stats = t.stats()
    assert stats["bytes_up"] == 8 + len(request)
    assert stats["bytes_down"] == 32 + len(reply)


def test_unlimited_passes_bytes_intact(origin_factory, throttle_factory):
    reply = os.urandom(20 * MiB + 1)
    origin = origin_factory(reply=reply)
    t = throttle_factory(origin.port)
    digest, got = exchange(t.port, b"x" * 100)
    assert digest == hashlib.sha256(b"x" * 100).digest()
    assert got == reply


def test_rate_and_delay_are_lower_bounds(origin_factory, throttle_factory):
    """N bytes at rate R take at least N / R; a request and its answer at least 2 x delay more.
    Lower bounds only: a busy machine makes the transfer slower, never faster."""
    size, rate, delay_ms = 8 * MiB, 8e6, 50
    origin = origin_factory(reply=os.urandom(size))
    t = throttle_factory(origin.port, rate=rate, delay_ms=delay_ms)
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", t.port), timeout=60) as s:
        s.sendall(struct.pack("!Q", 0))
        s.shutdown(socket.SHUT_WR)
        recv_exactly(s, 32)
        first = time.monotonic()
        got = recv_all(s)
    end = time.monotonic()
    assert len(got) == size
    # the request's trip and the answer's (the origin connection opens during the first)
    assert first - start >= 2 * delay_ms / 1000
    assert end - start >= (size + 32) / rate


def test_connections_are_counted(origin_factory, throttle_factory):
    origin = origin_factory(reply=b"hello")
    t = throttle_factory(origin.port, rate=50e6, delay_ms=1)
    assert t.stats()["connections"] == 0
    for _ in range(5):
        assert exchange(t.port, b"abc")[1] == b"hello"
    assert t.stats()["connections"] == 5
    assert origin.accepted == 5
    wait_until(lambda: t.stats()["open"] == 0, "the proxy to close the finished connections")


def test_origin_reset_reaches_the_client(origin_factory, throttle_factory):
    origin = origin_factory(reply=os.urandom(2 * MiB), reset_after=MiB)
    t = throttle_factory(origin.port, rate=100e6, delay_ms=1)
    with socket.create_connection(("127.0.0.1", t.port), timeout=60) as s:
        s.sendall(struct.pack("!Q", 0))
        got = 0
        # A reset discards what the receiving kernel had not handed over yet, so the reset may
        # reach the client before any byte (even the digest): only the reset itself is certain.
        with pytest.raises(ConnectionResetError):
            while part := s.recv(1 << 20):
                got += len(part)
        assert got <= 32 + MiB  # what came before the reset, at most


def test_client_reset_reaches_the_origin(origin_factory, throttle_factory):
    # The origin keeps sending a large reply; the client resets after its first bytes.
    origin = origin_factory(reply=os.urandom(64 * MiB))
    t = throttle_factory(origin.port, rate=20e6, delay_ms=1)
    s = socket.create_connection(("127.0.0.1", t.port), timeout=60)
    s.sendall(struct.pack("!Q", 0))
    recv_exactly(s, 32 + 1024)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    wait_until(lambda: origin.peer_errors, "the origin to see the connection reset")
    assert any("ConnectionResetError" in e or "BrokenPipeError" in e for e in origin.peer_errors)
    wait_until(lambda: t.stats()["open"] == 0, "the proxy to drop the connection")
