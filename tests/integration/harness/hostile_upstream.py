"""A registry fake for the faults a real registry will not commit: bodies that never end or
trickle forever, blobs that stop mid-way, lying Docker-Content-Digest headers, token realms in
other protocols. Everything it is not told to do, it answers like a small open registry.

    up = HostileUpstream().start()
    up.script("/v2/a/b/manifests/v1", "endless_404")         # one of SCRIPTS, or a callable
    up.script(path, up.answer(body, length=len(body) + 9))   # a scripted answer (see answer())
    up.script(path, [first, then])                           # answers in turn, the last repeated
    up.gate.clear(); ...; up.gate.set()                       # holds answers made with hold_*
    up.manifests["/v2/a/b/manifests/v1"] = (headers, body)   # a plain 200 (HEAD: head only)
    up.realm = "http://127.0.0.1:PORT/token"                 # Bearer challenge for /v2/<name>/...
    up.token_key = tokens.key.public_key()                   # ... and tokens it accepts
    up.requests                                              # [{"method", "path", "headers"}]
    up.cut_by_peer                                           # scripted answers the client ended

Paths outside /v2/<name>/ (a token endpoint at `up.url + "/token"`, an S3 key) are never
challenged. Each connection serves one request and is closed after it. A scripted answer that never ends
runs until the client closes the connection (the write fails or EOF is read): `cut_by_peer`
counts those, which is how a test sees that the client gave up rather than read forever.
"""
import socket
import struct
import threading
import time

import jwt

from .net import free_port

SCRIPTS = ("endless_404", "endless_401", "trickle_manifest", "stall_blob", "reset")
STALL_AFTER = 64 * 1024  # stall_blob: bytes sent of the promised STALL_SIZE before it stops
STALL_SIZE = 1024 * 1024
WAIT = 120  # seconds a held answer waits for its gate: bounds a hang, says nothing about speed
PIECE = 64 * 1024


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
        self.gate = threading.Event()
        self.gate.set()
        self._lock = threading.Lock()
        self._sock = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, path: str, what) -> None:
        """`what`: one of SCRIPTS, a callable(conn, req), or a list of those given in turn (the
        last one to every request after)."""
        for w in what if isinstance(what, list) else [what]:
            assert callable(w) or w in SCRIPTS, w
        self.scripts[path] = list(what) if isinstance(what, list) else what

    def answer(self, body, *, status: int = 200, headers: dict | None = None,
               length: int | None = None, chunked: bool = False, upto: int | None = None,
               then: str = "close", hold_head: bool = False, hold_at: int | None = None):
        """A scripted answer: `body` (bytes, or an iterable of byte pieces made as they are
        sent, so a 100 MiB body never exists whole) as a `status` response.

        length: the Content-Length announced (default: the true one for bytes); an iterable
            without one, or chunked=True, is sent chunked. The last chunk goes out only after
            the whole body.
        upto: only this many body bytes are sent, then `then`: "close" (FIN) or "stall"
            (nothing more until the client hangs up).
        hold_head / hold_at: wait for `gate` before the head / after `hold_at` body bytes, so
            a test can join several clients to one transfer before it goes wrong."""
        if length is None and isinstance(body, bytes) and not chunked:
            length = len(body)
        chunked = chunked or length is None
        head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n"
                                                   for k, v in (headers or {}).items())
        head += "Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {length}\r\n"
        head = (head + "Connection: close\r\n\r\n").encode("latin-1")

        def pieces():
            for p in [body] if isinstance(body, bytes) else body:
                for i in range(0, len(p), PIECE):
                    yield p[i:i + PIECE]

        def frame(conn, p: bytes):
            if p:  # an empty chunk would end a chunked body
                conn.sendall(b"%x\r\n%s\r\n" % (len(p), p) if chunked else p)

        def send(conn, req):
            if hold_head:
                self.gate.wait(WAIT)
            try:
                conn.sendall(head)
                sent, whole = 0, True
                for p in ([] if req["method"] == "HEAD" else pieces()):
                    if upto is not None and sent + len(p) > upto:
                        p, whole = p[:upto - sent], False
                    if hold_at is not None and sent <= hold_at < sent + len(p):
                        first, p = p[:hold_at - sent], p[hold_at - sent:]
                        frame(conn, first)
                        sent += len(first)
                        self.gate.wait(WAIT)
                    frame(conn, p)
                    sent += len(p)
                    if not whole:
                        break
                if whole:
                    if chunked:
                        conn.sendall(b"0\r\n\r\n")
                    return
                if then != "stall":
                    return  # a FIN after a short body: the fake cut it, not the client
                while conn.recv(65536):
                    pass  # nothing more is sent; EOF is the client giving up
            except OSError:
                pass
            with self._lock:
                self.cut_by_peer += 1

        return send

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
        registry_path = path.startswith("/v2/") and path != "/v2/"
        if self.realm is not None and registry_path and not self._authorized(req):
            name = path[len("/v2/"):].rsplit("/", 2)[0]
            return self._send(conn, 401, {
                "WWW-Authenticate": f'Bearer realm="{self.realm}",service="{self.service}",'
                                    f'scope="repository:{name}:pull"',
                "Content-Type": "application/json"},
                b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
                head_only=req["method"] == "HEAD")
        what = self.scripts.get(path)
        if what is not None and req["method"] == "HEAD" and (
                "/blobs/" in path or path.endswith("/link")):
            # The blob exists (drayage proves that a repository holds a blob before it serves
            # it: a HEAD of the blob upstream, or of the repository's _layers link in the
            # bucket); what misbehaves is the GET. A HEAD takes no scripted answer.
            return self._send(conn, 200, {"Content-Type": "application/octet-stream"}, b"",
                              head_only=True)
        if isinstance(what, list):
            with self._lock:
                what = what.pop(0) if len(what) > 1 else what[0]
        if callable(what):
            return what(conn, req)
        if what == "stall_blob":
            return self.answer(b"s" * STALL_SIZE, upto=STALL_AFTER, then="stall",
                               headers={"Content-Type": "application/octet-stream"})(conn, req)
        if what == "reset":  # RST instead of an answer: SO_LINGER 0, then close
            return conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
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
        except OSError:
            pass
        with self._lock:
            self.cut_by_peer += 1

