"""Runs tests/unit/http/http_test_server (the real http::Server with test routes) and speaks
raw HTTP/1.1 to it over sockets."""
import os
import pathlib
import signal
import socket
import subprocess

from .net import wait_for_port, terminate

ROOT = pathlib.Path(__file__).resolve().parents[3]

# byte i of every /source body is i % 251; a long copy of the pattern to compare against.
PATTERN_PERIOD = 251
PATTERN = bytes(range(PATTERN_PERIOD)) * (4 * 1024 * 1024 // PATTERN_PERIOD + 2)


def binary() -> pathlib.Path:
    build = pathlib.Path(os.environ.get("DRAYAGE_BUILD_DIR", ROOT / "build")).resolve()
    return build / "tests" / "unit" / "http" / "http_test_server"


class HttpTestServer:
    """One http_test_server process on a kernel-chosen loopback port."""

    def __init__(self, workdir: pathlib.Path, **options):
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.options = options
        self.proc = None
        self.port = None
        self.log_path = self.workdir / "http_test_server.log"

    def start(self) -> "HttpTestServer":
        args = [str(binary()), "0"]
        args += [f"--{k.replace('_', '-')}={v}" for k, v in self.options.items()]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._log)
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.proc.kill()
            raise RuntimeError(f"http_test_server did not start: {line!r}\n{self.log()}")
        self.port = int(line)
        wait_for_port(self.port, proc=self.proc, what="http_test_server")
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def connect(self, timeout: float = 30.0) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        terminate(self.proc, timeout=timeout)
        self.proc.stdout.close()
        self._log.close()
        return self.proc.returncode


class Response:
    def __init__(self, status: int, reason: str, headers: list, body: bytes):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.headers} {self.body[:200]!r}>"


class Reader:
    """Reads HTTP/1.1 responses from a socket (no library between the test and the wire)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""

    def _fill(self) -> bool:
        data = self.sock.recv(1 << 20)
        if not data:
            return False
        self.buf += data
        return True

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError("connection closed in a response head")
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionError(f"connection closed with {len(self.buf)} of {n} bytes")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def head(self):
        status_line = self._line().decode("latin-1")
        version, status, *reason = status_line.split(" ", 2)
        assert version == "HTTP/1.1", status_line
        headers = []
        while True:
            line = self._line()
            if not line:
                break
            k, v = line.decode("latin-1").split(":", 1)
            headers.append((k.strip(), v.strip()))
        return int(status), (reason[0] if reason else ""), headers

    def response(self, head_request: bool = False) -> Response:
        status, reason, headers = self.head()
        r = Response(status, reason, headers, b"")
        if head_request or status < 200 or status in (204, 304):
            return r
        if r.header("Transfer-Encoding") == "chunked":
            body = b""
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    break
                body += self._exact(size)
                assert self._exact(2) == b"\r\n"
            r.body = body
        elif r.header("Content-Length") is not None:
            r.body = self._exact(int(r.header("Content-Length")))
        else:
            while self._fill():
                pass
            r.body, self.buf = self.buf, b""
        return r

    def closed(self) -> bool:
        """True when the peer closed (EOF or reset) with nothing more to read."""
        if self.buf:
            return False
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


def request(method: str, target: str, headers: dict | None = None, body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k in (headers or {})):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def metric(server: HttpTestServer, name: str) -> float:
    """Value of a label-less series in the server's /metrics."""
    with server.connect() as s:
        s.sendall(request("GET", "/metrics", {"Connection": "close"}))
        text = Reader(s).response().body.decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)
