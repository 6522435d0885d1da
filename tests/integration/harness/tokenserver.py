"""An offline Docker registry token server (distribution docs/spec/auth/token.md).

    tokens = TokenServer(workdir, users={"alice": {"password": "pw",
                                                   "access": {"team/app": ["pull"]}}},
                         anonymous={"public/*": ["pull"]})
    tokens.start()
    reg = Registry(dir, token=tokens)   # auth.token: realm, service, issuer, rootcertbundle
    ...
    tokens.token_requests()             # what was asked, by whom, and the answer
    tokens.stop()

It issues ES256 JWTs whose header carries the signing certificate as `x5c` (a self-signed P-256
certificate made at start; its PEM is the registry's `rootcertbundle`), with `iss`, `aud` (the
service), `sub`, `exp`/`nbf`/`iat`, `jti` and `access` from the requested scopes, narrowed to what
the user may do. Users authenticate with Basic auth; a wrong password gets 401. Requests without
credentials get the `anonymous` grants. Access maps repository names (or fnmatch patterns like
"team/*", or "*") to allowed actions; the `registry:catalog:*` scope is granted to users whose
access has "catalog": ["*"].

Knobs for client tests: `expires_in`, `token_fields` (which of "token"/"access_token" to send),
`send_expires_in`, `send_issued_at`. For counting concurrency: `hold()` keeps every token request
waiting (connection open) until `release()`; `in_flight()` and `max_in_flight` count requests
(each its own connection: the server speaks HTTP/1.0) being answered now and at most so far.
"""
import base64
import datetime
import fnmatch
import http.server
import json
import pathlib
import threading
import time
import urllib.parse
import uuid

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .net import free_port


def parse_scope(scope: str):
    """'repository:team/app:pull,push' -> ('repository', 'team/app', ['pull', 'push']).
    The name may itself hold ':' (a host:port prefix), so split at the first and last."""
    first = scope.find(":")
    last = scope.rfind(":")
    if first < 0 or last == first:
        return None
    return scope[:first], scope[first + 1:last], [a for a in scope[last + 1:].split(",") if a]


class TokenServer:
    def __init__(self, workdir, users: dict | None = None, anonymous: dict | None = None,
                 service: str = "drayage-test-registry", issuer: str = "drayage-test-issuer",
                 expires_in: int = 300, port: int | None = None):
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.users = dict(users or {})
        self.anonymous = dict(anonymous or {})
        self.service = service
        self.issuer = issuer
        self.expires_in = expires_in
        self.token_fields = ("token", "access_token")
        self.send_expires_in = True
        self.send_issued_at = True
        self.port = port or free_port()
        self.cert_path = self.workdir / "token-signer.pem"
        self._lock = threading.Lock()
        self._requests = []
        self._server = None
        self._gate = threading.Event()
        self._gate.set()
        self._in_flight = 0
        self.max_in_flight = 0
        self._make_key()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def realm(self) -> str:
        return self.url + "/token"

    def _make_key(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "drayage test token signer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=False,
                encipher_only=False, decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self._key_pem = self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        self._x5c = [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()]

    def _allowed(self, grants: dict, rtype: str, name: str) -> set:
        if rtype == "registry" and name == "catalog":
            return set(grants.get("catalog", []))
        if rtype != "repository":
            return set()
        out = set()
        for pattern, actions in grants.items():
            if pattern != "catalog" and fnmatch.fnmatchcase(name, pattern):
                out |= set(actions)
        return out

    def issue(self, user: str, scopes: list) -> dict:
        """The token response for `user` ("" for anonymous) asking for `scopes`."""
        grants = self.users[user]["access"] if user else self.anonymous
        access = []
        for scope in scopes:
            parsed = parse_scope(scope)
            if parsed is None:
                continue
            rtype, name, actions = parsed
            allowed = self._allowed(grants, rtype, name)
            granted = ["*"] if "*" in actions and "*" in allowed else \
                [a for a in actions if a in allowed or "*" in allowed]
            if granted:
                access.append({"type": rtype, "name": name, "actions": granted})
        now = int(time.time())
        claims = {
            "iss": self.issuer, "sub": user, "aud": self.service,
            "exp": now + self.expires_in, "nbf": now - 10, "iat": now,
            "jti": uuid.uuid4().hex, "access": access,
        }
        token = jwt.encode(claims, self._key_pem, algorithm="ES256",
                           headers={"x5c": self._x5c, "typ": "JWT"})
        body = {field: token for field in self.token_fields}
        if self.send_expires_in:
            body["expires_in"] = self.expires_in
        if self.send_issued_at:
            body["issued_at"] = datetime.datetime.fromtimestamp(
                now, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return body

    def token_requests(self, status: int | None = None) -> list:
        """Requests so far: dicts with user ("" anonymous), scopes, service, status, access."""
        with self._lock:
            return [{k: v for k, v in r.items() if k != "_logged"} for r in self._requests
                    if status is None or r["status"] == status]

    def hold(self) -> None:
        """Token requests wait (for at most 120 s) until release()."""
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def start(self) -> "TokenServer":
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status: int, body: dict, extra: dict | None = None):
                # Record before answering: a client may read the answer, exit, and the test look
                # at token_requests() before this thread would get to a record made afterwards.
                self._log_record()
                self._leave()
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _log_record(self):
                record = getattr(self, "_record", None)
                if record is not None and not record.get("_logged"):
                    record["_logged"] = True
                    with owner._lock:
                        owner._requests.append(record)

            def do_GET(self):
                with owner._lock:
                    owner._in_flight += 1
                    owner.max_in_flight = max(owner.max_in_flight, owner._in_flight)
                self._counted = True
                try:
                    owner._gate.wait(timeout=120)
                    self._token()
                finally:
                    self._leave()

            def _leave(self):
                # Before the answer is sent: the client cannot start its next request while this
                # one still counts.
                if getattr(self, "_counted", False):
                    self._counted = False
                    with owner._lock:
                        owner._in_flight -= 1

            def _token(self):
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                scopes = []
                for s in query.get("scope", []):
                    scopes += s.split(" ")
                record = {"user": "", "scopes": scopes, "service": query.get("service", [""])[0],
                          "status": 0, "access": []}
                self._record = record
                try:
                    if url.path != "/token":
                        record["status"] = 404
                        return self._answer(404, {"details": "not found"})
                    user = ""
                    auth = self.headers.get("Authorization", "")
                    if auth:
                        try:
                            scheme, value = auth.split(" ", 1)
                            name, _, password = base64.b64decode(value).decode().partition(":")
                        except Exception:
                            scheme, name, password = "", "", ""
                        entry = owner.users.get(name)
                        if scheme.lower() != "basic" or entry is None or \
                                entry["password"] != password:
                            record["user"] = name
                            record["status"] = 401
                            return self._answer(
                                401, {"details": "incorrect username or password"},
                                {"WWW-Authenticate": 'Basic realm="drayage-test-tokens"'})
                        user = name
                    record["user"] = user
                    body = owner.issue(user, scopes)
                    claims = jwt.decode(body.get("token") or body.get("access_token"),
                                        options={"verify_signature": False})
                    record["access"] = claims["access"]
                    record["status"] = 200
                    return self._answer(200, body)
                finally:
                    self._log_record()

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
