"""A small HTTP/1.1 fault-injecting TCP proxy (stdlib asyncio), put between a client and S3.

Faults a real S3 peer cannot be made to produce on demand:
  - "slowdown": answer the request with 503 and an S3 `SlowDown` XML body (request not forwarded)
  - "reset_request": forward the request head and `after` body bytes, then reset (RST) both sides
  - "reset_response": forward the response head and `after` body bytes, then reset the client
  - "stall_response": forward the response head and `after` body bytes, then send nothing for
    `seconds` (None: until the client gives up)
and a per-connection bandwidth limit (`rate`, bytes/s, each direction).

Every request gets its own upstream connection: the proxy adds `Connection: close` to the
request and the response, so the client opens a new connection per request and faults are
decided per request. Rules are checked in order at each request head; the first that matches
(substring `match` of the request line, probability `share`, at most `times` times) applies.

Configurable while running, from the test's thread:
    proxy.set_rules([Rule("slowdown", share=0.3)]); proxy.rate = 50e6; proxy.stats["slowdown"]
Every request head that reached the proxy, in order and as sent (bytes), is in
`proxy.request_heads()`: what a client sent its upstream, credentials included; their request
lines are `proxy.request_lines`.

Run by hand (for bench/): python3 -m harness.faultproxy --upstream 127.0.0.1:PORT --rate 50e6
"""
import argparse
import asyncio
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Optional

from .net import free_port

SLOWDOWN_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                 b'<Message>Please reduce your request rate.</Message>'
                 b'<RequestId>faultproxy</RequestId></Error>')
CHUNK = 64 * 1024


@dataclass
class Rule:
    kind: str  # slowdown | reset_request | reset_response | stall_response
    share: float = 1.0
    match: Optional[str] = None  # substring of the request line ("GET ", "partNumber=")
    times: Optional[int] = None  # at most this many injections; None: unlimited
    after: int = 0  # body bytes forwarded before a reset or stall
    seconds: Optional[float] = None  # stall length; None: forever

    def __post_init__(self):
        assert self.kind in ("slowdown", "reset_request", "reset_response", "stall_response")


class _Throttle:
    """Holds a connection direction to `rate` bytes/s (None: unlimited)."""

    def __init__(self, proxy: "FaultProxy"):
        self.proxy = proxy
        self.start = time.monotonic()
        self.sent = 0

    async def account(self, n: int) -> None:
        self.sent += n
        rate = self.proxy.rate
        if not rate:
            return
        due = self.start + self.sent / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.transport.abort()


def _with_connection_close(head: bytes) -> bytes:
    lines = head.split(b"\r\n")
    kept = [lines[0]] + [ln for ln in lines[1:] if ln and
                         not ln.lower().startswith(b"connection:") and
                         not ln.lower().startswith(b"keep-alive:")]
    return b"\r\n".join(kept + [b"Connection: close", b"", b""])


def _content_length(head: bytes) -> Optional[int]:
    for ln in head.split(b"\r\n")[1:]:
        if ln.lower().startswith(b"content-length:"):
            return int(ln.split(b":", 1)[1].strip())
    return None


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int, port: int | None = None,
                 seed: int = 1234):
        self.upstream = (upstream_host, upstream_port)
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.rate: Optional[float] = None
        self._rules: list[Rule] = []
        self._used: dict[int, int] = {}
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self.stats = {"requests": 0, "slowdown": 0, "reset_request": 0, "reset_response": 0,
                      "stall_response": 0}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._heads: list[bytes] = []

    # ---- control (any thread) -------------------------------------------------------------
    def set_rules(self, rules: list[Rule]) -> None:
        with self._lock:
            self._rules = list(rules)
            self._used = {}

    def request_heads(self) -> list[bytes]:
        with self._lock:
            return list(self._heads)

    @property
    def request_lines(self) -> list[str]:
        return [head.split(b"\r\n", 1)[0].decode(errors="replace")
                for head in self.request_heads()]

    def clear(self) -> None:
        self.set_rules([])
        self.rate = None

    def _pick(self, request_line: str) -> Optional[Rule]:
        with self._lock:
            self.stats["requests"] += 1
            for i, rule in enumerate(self._rules):
                if rule.match is not None and rule.match not in request_line:
                    continue
                if rule.times is not None and self._used.get(i, 0) >= rule.times:
                    continue
                if self._random.random() >= rule.share:
                    continue
                self._used[i] = self._used.get(i, 0) + 1
                self.stats[rule.kind] += 1
                return rule
        return None

    # ---- serving --------------------------------------------------------------------------
    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter):
        uwriter = None
        try:
            try:
                head = await creader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            request_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
            with self._lock:
                self._heads.append(head)
            rule = self._pick(request_line)
            length = _content_length(head)
            if rule is not None and rule.kind == "slowdown":
                if length:
                    await creader.readexactly(length)
                cwriter.write(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                              b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(SLOWDOWN_BODY)
                              + SLOWDOWN_BODY)
                await cwriter.drain()
                return
            ureader, uwriter = await asyncio.open_connection(*self.upstream)
            uwriter.write(_with_connection_close(head))
            up = asyncio.create_task(self._pipe_request(creader, uwriter, rule, cwriter))
            try:
                await self._pipe_response(ureader, cwriter, rule)
            finally:
                up.cancel()
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            if uwriter is not None:
                uwriter.transport.abort()
            if not cwriter.transport.is_closing():
                cwriter.close()

    async def _pipe_request(self, creader, uwriter, rule, cwriter):
        throttle = _Throttle(self)
        sent = 0
        try:
            while True:
                data = await creader.read(CHUNK)
                if not data:
                    return
                if rule is not None and rule.kind == "reset_request" and sent + len(data) >= rule.after:
                    uwriter.write(data[:max(0, rule.after - sent)])
                    await uwriter.drain()
                    _reset(cwriter)
                    _reset(uwriter)
                    return
                sent += len(data)
                uwriter.write(data)
                await uwriter.drain()
                await throttle.account(len(data))
        except (ConnectionError, OSError, asyncio.CancelledError):
            return

    async def _pipe_response(self, ureader, cwriter, rule):
        throttle = _Throttle(self)
        head = await ureader.readuntil(b"\r\n\r\n")
        cwriter.write(_with_connection_close(head))
        sent = 0
        while True:
            data = await ureader.read(CHUNK)
            if not data:
                await cwriter.drain()
                return
            if rule is not None and rule.kind in ("reset_response", "stall_response") \
                    and sent + len(data) >= rule.after:
                cut = max(0, rule.after - sent)
                cwriter.write(data[:cut])
                await cwriter.drain()
                if rule.kind == "reset_response":
                    _reset(cwriter)
                    return
                await asyncio.sleep(3600 if rule.seconds is None else rule.seconds)
                rule = None  # the stall is over: deliver the rest
                sent += cut
                data = data[cut:]
            sent += len(data)
            cwriter.write(data)
            await cwriter.drain()
            await throttle.account(len(data))

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> "FaultProxy":
        def run():
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)

            async def serve():
                self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port,
                                                          limit=1 << 20)
                self._ready.set()
                async with self._server:
                    await self._server.serve_forever()

            try:
                self._loop.run_until_complete(serve())
            except asyncio.CancelledError:
                pass
            finally:
                self._ready.set()

        self._thread = threading.Thread(target=run, daemon=True, name="faultproxy")
        self._thread.start()
        if not self._ready.wait(10) or self._server is None:
            raise RuntimeError("fault proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is None or self._server is None:
            return
        loop = self._loop

        def shutdown():
            self._server.close()
            for task in asyncio.all_tasks(loop):
                task.cancel()

        loop.call_soon_threadsafe(shutdown)
        self._thread.join(10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--upstream", required=True, help="host:port")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--rate", type=float, default=0, help="bytes/s per connection, 0: unlimited")
    a = p.parse_args()
    host, port = a.upstream.rsplit(":", 1)
    proxy = FaultProxy(host, int(port), port=a.port or None)
    proxy.rate = a.rate or None
    proxy.start()
    print(f"listening {proxy.endpoint}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        proxy.stop()


if __name__ == "__main__":
    main()
