"""A registry fake for the faults a real registry will not commit: bodies that never end or
trickle forever, blobs that stop mid-way, lying Docker-Content-Digest headers, token realms in
other protocols. Everything it is not told to do, it answers like a small open registry.

    up = HostileUpstream().start()
    up.script("/v2/a/b/manifests/v1", "endless_404")         # one of SCRIPTS, or a callable
    up.manifests["/v2/a/b/manifests/v1"] = (headers, body)   # a plain 200 (HEAD: head only)
    up.realm = "http://127.0.0.1:PORT/token"                 # Bearer challenge for /v2/<name>/...
    up.token_key = tokens.key.public_key()                   # ... and tokens it accepts
    up.requests                                              # [{"method", "path", "headers"}]
    up.cut_by_peer                                           # scripted answers the client ended

Each connection serves one request and is closed after it. A scripted answer that never ends
runs until the client closes the connection (the write fails or EOF is read): `cut_by_peer`
counts those, which is how a test sees that the client gave up rather than read forever.
"""
import socket
import threading
import time

import jwt

from .net import free_port

SCRIPTS = ("endless_404", "endless_401", "trickle_manifest", "stall_blob")
STALL_AFTER = 64 * 1024  # stall_blob: bytes sent of the promised STALL_SIZE before it stops
STALL_SIZE = 1024 * 1024


class HostileUpstream:
    def __init__(self, port: int | None = None, service: str = "hostile-test"):
        self.port = port or free_port()
        self.service = service
        self.scripts: dict = {}
        self.manifests: dict = {}
        self.realm: str | None = None
        self.token_key = None
        self.requests: list = []
        self.cut_by_peer = 0
        self._lock = threading.Lock()
        self._sock = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, path: str, what) -> None:
        assert callable(what) or what in SCRIPTS, what
        self.scripts[path] = what

    def start(self) -> "HostileUpstream":
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        self._sock.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def paths(self, method: str | None = None) -> list:
        with self._lock:
            return [r["path"] for r in self.requests if method in (None, r["method"])]

    # ---- serving ----------------------------------------------------------------------------
    def _accept(self):
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket):
        try:
            with conn:
                req = self._read_request(conn)
                if req is None:
                    return
                with self._lock:
                    self.requests.append(req)
                self._answer(conn, req)
        except (ConnectionError, OSError):
            pass

    @staticmethod
    def _read_request(conn: socket.socket):
        data = b""
        while b"\r\n\r\n" not in data:
            piece = conn.recv(65536)
            if not piece:
                return None
            data += piece
        head, rest = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            piece = conn.recv(65536)
            if not piece:
                break
            rest += piece
        return {"method": method, "path": target.split("?")[0], "target": target,
                "headers": headers, "body": rest}

    def _answer(self, conn, req):
        path = req["path"]
        if self.realm is not None and path != "/v2/" and not self._authorized(req):
            name = path[len("/v2/"):].rsplit("/", 2)[0]
            return self._send(conn, 401, {
                "WWW-Authenticate": f'Bearer realm="{self.realm}",service="{self.service}",'
                                    f'scope="repository:{name}:pull"',
                "Content-Type": "application/json"},
                b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
                head_only=req["method"] == "HEAD")
        what = self.scripts.get(path)
        if callable(what):
            return what(conn, req)
        if what is not None and req["method"] == "HEAD" and "/blobs/" in path:
            # The blob exists (drayage proves a repository holds a blob with a HEAD before it
            # serves it); what misbehaves is its GET.
            return self._send(conn, 200, {"Content-Type": "application/octet-stream"}, b"",
                              head_only=True)
        if what is not None:
            return self._endless(conn, what)
        if path == "/v2/":
            return self._send(conn, 200, {"Content-Type": "application/json"}, b"{}")
        if path in self.manifests:
            headers, body = self.manifests[path]
            return self._send(conn, 200, headers, body, head_only=req["method"] == "HEAD")
        return self._send(conn, 404, {"Content-Type": "application/json"},
                          b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}',
                          head_only=req["method"] == "HEAD")

    def _authorized(self, req) -> bool:
        auth = req["headers"].get("authorization", "")
        if not auth.startswith("Bearer ") or self.token_key is None:
            return False
        try:
            claims = jwt.decode(auth[len("Bearer "):], self.token_key, algorithms=["ES256"],
                                audience=self.service)
        except jwt.PyJWTError:
            return False
        name = req["path"][len("/v2/"):].rsplit("/", 2)[0]
        return any(a.get("name") == name and "pull" in a.get("actions", [])
                   for a in claims.get("access", []))

    @staticmethod
    def _send(conn, status: int, headers: dict, body: bytes, head_only: bool = False):
        head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        conn.sendall(head.encode("latin-1") + (b"" if head_only else body))

    def _endless(self, conn, what: str):
        """Answers that never end by themselves: they run until the client hangs up."""
        try:
            if what in ("endless_404", "endless_401"):
                status = "404 Not Found" if what == "endless_404" else "401 Unauthorized"
                conn.sendall(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                             "WWW-Authenticate: Basic realm=\"hostile\"\r\n"
                             "Transfer-Encoding: chunked\r\n\r\n".encode())
                chunk = b"x" * 65536
                piece = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
                while True:
                    conn.sendall(piece)
            elif what == "trickle_manifest":
                conn.sendall(b"HTTP/1.1 200 OK\r\n"
                             b"Content-Type: application/vnd.oci.image.manifest.v1+json\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n")
                while True:
                    time.sleep(0.1)
                    conn.sendall(b"1\r\n \r\n")
            elif what == "stall_blob":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                             b"Content-Length: %d\r\n\r\n" % STALL_SIZE + b"s" * STALL_AFTER)
                while conn.recv(65536):
                    pass  # nothing more is sent; EOF is the client giving up
        except OSError:
            pass
        with self._lock:
            self.cut_by_peer += 1
