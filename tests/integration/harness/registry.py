"""docker-registry (Debian's Docker Distribution 2.8) on a free loopback port, and test images.

    reg = Registry(tmp_path / "reg")                       # filesystem storage under the dir
    reg = Registry(dir, s3=s3_storage(swift))               # storage.s3 block (harness.swift)
    reg = Registry(dir, proxy_remoteurl="http://127.0.0.1:N")   # pull-through cache of another
    reg = Registry(dir, htpasswd={"alice": "secret"})       # Basic auth (bcrypt via htpasswd -B)
    reg = Registry(dir, token=TokenServer(...))             # Bearer token auth (tokenserver.py)
    reg = Registry(dir, redirect_baseurl="http://127.0.0.1:N/")  # blob GETs answer 307 there
    reg.start()
    image = reg.push_image("team/app", "v1", [1024, 5 * MiB])
    reg.blob_gets(image.layers[0].digest)                   # from the access log
    reg.sync(); assert not reg.blob_gets(digest)            # before asserting an absence
    reg.stop()

The access log (Apache combined format; docker-registry writes it to stdout) is captured to a
file; application logs (stderr) go to another. `extra` is deep-merged over the generated config.
"""
import dataclasses
import hashlib
import json
import os
import pathlib
import re
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
import uuid

import yaml

from .drayage import deep_merge
from .net import free_port, wait_for_port, wait_until, terminate

KiB = 1024
MiB = 1024 * KiB

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ALL_MANIFESTS = ",".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])

# In the path of the requests Registry.sync() sends; requests() leaves them out.
SENTINEL = "drayage-sentinel"

# One access-log line: host ident user [time] "METHOD PATH PROTO" status size "referer" "agent"
_ACCESS = re.compile(
    r'^(?P<host>\S+) \S+ (?P<user>\S+) \[[^\]]*\] "(?P<method>[A-Z]+) (?P<path>\S+) [^"]*" '
    r'(?P<status>\d{3}) (?P<size>\d+|-)')


@dataclasses.dataclass
class Blob:
    digest: str
    size: int
    media_type: str
    path: pathlib.Path | None = None  # the bytes in the OCI layout (layers and config)


@dataclasses.dataclass
class Image:
    repo: str
    tag: str
    manifest_digest: str
    manifest: bytes
    config: Blob
    layers: list  # of Blob, in manifest order
    layout: pathlib.Path  # the OCI layout directory it was pushed from


def _sha256_file(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _write_layer(path: pathlib.Path, size: int, seed: int | None) -> None:
    """Writes exactly `size` bytes. With size >= 2 KiB and a multiple of 512 the bytes are a valid
    tar holding one file (so clients can unpack it); otherwise raw bytes. Content is os.urandom,
    or a deterministic stream from `seed` (same seed and size, same digest)."""
    def filler():
        if seed is None:
            while True:
                yield os.urandom(4 * MiB)
        counter = 0
        while True:
            block = hashlib.sha512(f"{seed}:{counter}".encode()).digest()
            counter += 1
            # 64 KiB from one hash, then stretched: fast and deterministic, not meant to be random.
            yield (block * 1024)[: 64 * KiB] * 64

    gen = filler()

    def write_bytes(f, n):
        while n > 0:
            chunk = next(gen)[:n]
            f.write(chunk)
            n -= len(chunk)

    with open(path, "wb") as f:
        if size >= 2 * KiB and size % 512 == 0:
            data_size = size - 512 - 1024  # one header block, the data, two end blocks
            info = tarfile.TarInfo("payload.bin")
            info.size = data_size
            info.mtime = 0
            info.mode = 0o644
            header = info.tobuf(format=tarfile.USTAR_FORMAT)
            assert len(header) == 512
            f.write(header)
            write_bytes(f, data_size)  # data_size is a multiple of 512: no padding needed
            f.write(b"\0" * 1024)
        else:
            write_bytes(f, size)
    assert path.stat().st_size == size


def build_oci_layout(directory: pathlib.Path, tag: str, layer_sizes, seed: int | None = None,
                     annotations: dict | None = None) -> tuple:
    """Builds an OCI image layout by hand: uncompressed layers of exactly the given sizes, a
    config, a manifest, index.json and oci-layout. Returns (manifest bytes, config Blob, layers)."""
    directory = pathlib.Path(directory)
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    layers = []
    for i, size in enumerate(layer_sizes):
        tmp = directory / f"layer{i}.tmp"
        _write_layer(tmp, size, None if seed is None else seed * 1000 + i)
        digest = _sha256_file(tmp)
        dest = blobs / digest.split(":", 1)[1]
        tmp.replace(dest)
        layers.append(Blob(digest, size, OCI_LAYER_TAR, dest))

    config = json.dumps({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        # Layers are uncompressed, so each diff_id is the layer digest itself.
        "rootfs": {"type": "layers", "diff_ids": [b.digest for b in layers]},
        "history": [{"created_by": f"drayage test layer {i}"} for i in range(len(layers))],
    }, sort_keys=True).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    (blobs / config_digest.split(":", 1)[1]).write_bytes(config)
    config_blob = Blob(config_digest, len(config), OCI_CONFIG, blobs / config_digest.split(":")[1])

    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": b.media_type, "digest": b.digest, "size": b.size}
                   for b in layers],
    }
    if annotations:
        manifest_doc["annotations"] = annotations
    manifest = json.dumps(manifest_doc, sort_keys=True).encode()
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    (blobs / manifest_digest.split(":", 1)[1]).write_bytes(manifest)
    (directory / "index.json").write_text(json.dumps({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    }))
    (directory / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return manifest, config_blob, layers


def s3_storage(swift, rootdirectory: str = "/reg") -> dict:
    """The storage.s3 block for a harness.swift.Swift (settings from TESTBED.md)."""
    return {
        "accesskey": swift.access_key, "secretkey": swift.secret_key, "region": swift.region,
        "regionendpoint": swift.endpoint, "bucket": swift.bucket, "secure": False,
        "v4auth": True, "chunksize": 5 * MiB, "rootdirectory": rootdirectory,
    }


def skopeo_env() -> dict:
    env = dict(os.environ)
    env.pop("AWS_CA_BUNDLE", None)
    return env


class Registry:
    """One docker-registry process. See the module docstring."""

    def __init__(self, workdir, s3: dict | None = None, proxy_remoteurl: str | None = None,
                 proxy_username: str | None = None, proxy_password: str | None = None,
                 htpasswd: dict | None = None, token=None, redirect_baseurl: str | None = None,
                 extra: dict | None = None, port: int | None = None):
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.root = self.workdir / "storage"
        self.htpasswd_users = dict(htpasswd or {})
        self.token = token
        self.access_log_path = self.workdir / "access.log"
        self.log_path = self.workdir / "registry.log"
        self.config_path = self.workdir / "config.yml"
        self.proc = None

        storage = {"delete": {"enabled": True},
                   "maintenance": {"uploadpurging": {"enabled": False}}}
        if s3 is not None:
            storage["s3"] = dict(s3)
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            storage["filesystem"] = {"rootdirectory": str(self.root)}
        config = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": storage,
            "http": {"addr": f"127.0.0.1:{self.port}", "secret": "drayage-test-secret"},
        }
        if proxy_remoteurl:
            config["proxy"] = {"remoteurl": proxy_remoteurl}
            if proxy_username:
                config["proxy"]["username"] = proxy_username
                config["proxy"]["password"] = proxy_password or ""
        if htpasswd is not None:
            path = self.workdir / "htpasswd"
            lines = []
            for user, password in self.htpasswd_users.items():
                out = subprocess.run(["htpasswd", "-Bbn", user, password], check=True,
                                     capture_output=True, text=True).stdout.strip()
                lines.append(out)
            path.write_text("\n".join(lines) + "\n")
            config["auth"] = {"htpasswd": {"realm": "drayage-test", "path": str(path)}}
        if token is not None:
            config["auth"] = {"token": {
                "realm": token.realm,
                "service": token.service,
                "issuer": token.issuer,
                "rootcertbundle": str(token.cert_path),
            }}
        if redirect_baseurl:
            # The redirect storage middleware answers blob GETs with 307 to baseurl + the storage
            # path (docker/registry/v2/blobs/sha256/xx/<hex>/data), like S3/CloudFront would.
            config["middleware"] = {"storage": [
                {"name": "redirect", "options": {"baseurl": redirect_baseurl}}]}
        self.config = deep_merge(config, extra or {})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "Registry":
        self.config_path.write_text(yaml.safe_dump(self.config))
        self._out = open(self.access_log_path, "ab")
        self._err = open(self.log_path, "ab")
        # This machine sets AWS_CA_BUNDLE; the s3 driver aborts at start with it.
        self.proc = subprocess.Popen(
            ["env", "-u", "AWS_CA_BUNDLE", "docker-registry", "serve", str(self.config_path)],
            stdout=self._out, stderr=self._err)
        try:
            wait_for_port(self.port, proc=self.proc, what="docker-registry")
        except Exception:
            self.stop()
            raise RuntimeError("docker-registry failed to start:\n" + self.log())
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        terminate(self.proc, timeout=timeout)
        self._out.close()
        self._err.close()
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # --- access log -------------------------------------------------------------------------

    def requests(self) -> list:
        """Every request in the access log so far, as dicts: method, path, status, size, user."""
        out = []
        try:
            text = self.access_log_path.read_text(errors="replace")
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            m = _ACCESS.match(line)
            if m and SENTINEL not in m.group("path"):
                size = m.group("size")
                out.append({"method": m.group("method"), "path": m.group("path"),
                            "status": int(m.group("status")),
                            "size": 0 if size == "-" else int(size), "user": m.group("user")})
        return out

    def sync(self, timeout: float = 30.0) -> None:
        """Waits until the access log holds the line of every request answered before this call,
        so that what is not in it did not happen. docker-registry writes a request's line when
        its handler returns; this sends a request of its own (a sentinel, which requests()
        leaves out) and waits for that line: the requests finished before it are logged then."""
        path = f"/v2/?{SENTINEL}={uuid.uuid4().hex}"
        self.get(path)  # any status will do (401 with auth): every request is logged
        wait_until(lambda: path in self.access_log_path.read_text(errors="replace"),
                   f"the registry to log {path}", timeout)

    def wait_for_requests(self, predicate, count: int, timeout: float = 30.0,
                          since: int = 0) -> list:
        """Every request that matches (among those after the first `since`, e.g.
        `len(reg.requests())` taken earlier), once at least `count` do: all of them, including
        any past `count` that were answered meanwhile (sync()), so callers can assert exact
        lists. Fails when fewer than `count` match within `timeout`."""
        wait_until(lambda: len([r for r in self.requests()[since:] if predicate(r)]) >= count,
                   f"{count} such requests in the access log", timeout)
        self.sync()
        return [r for r in self.requests()[since:] if predicate(r)]

    def blob_gets(self, digest: str | None = None, status: int | None = None) -> list:
        """GET requests of blobs (optionally of one digest, with one status) in the access log."""
        def match(r):
            if r["method"] != "GET" or "/blobs/" not in r["path"]:
                return False
            if digest is not None and not r["path"].split("?")[0].endswith("/blobs/" + digest):
                return False
            return status is None or r["status"] == status
        return [r for r in self.requests() if match(r)]

    # --- images -----------------------------------------------------------------------------

    def push_image(self, repo: str, tag: str, layer_sizes=(KiB,), seed: int | None = None,
                   creds: str | None = None, annotations: dict | None = None) -> Image:
        """Builds an OCI layout by hand and pushes it with skopeo (digests preserved: layers
        stay uncompressed, so each layer blob has exactly the size asked for)."""
        layout = self.workdir / "images" / f"{repo.replace('/', '_')}_{tag}_{time.monotonic_ns()}"
        manifest, config, layers = build_oci_layout(layout, tag, layer_sizes, seed, annotations)
        policy = self.workdir / "policy.json"
        policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        cmd = ["skopeo", "--policy", str(policy), "copy", "--quiet", "--preserve-digests",
               "--dest-tls-verify=false"]
        cmd += ["--dest-creds", creds] if creds else ["--dest-no-creds"]
        cmd += [f"oci:{layout}:{tag}", f"docker://{self.host}/{repo}:{tag}"]
        res = subprocess.run(cmd, capture_output=True, text=True, env=skopeo_env(), timeout=600)
        if res.returncode != 0:
            raise RuntimeError(f"skopeo copy failed ({res.returncode}): {res.stderr}\n"
                               f"registry log:\n{self.log()[-4000:]}")
        digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        return Image(repo, tag, digest, manifest, config, layers, layout)

    def get(self, path: str, headers: dict | None = None, auth: tuple | None = None):
        """A plain GET against the registry (no token flow): (status, headers, body)."""
        req = urllib.request.Request(self.url + path, headers=headers or {})
        if auth:
            import base64
            req.add_header("Authorization", "Basic " + base64.b64encode(
                f"{auth[0]}:{auth[1]}".encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()



class StorageFileServer:
    """A plain HTTP server on another port serving a registry's filesystem storage tree: the
    target of `redirect_baseurl`, standing in for S3/CDN. Records every request's path and
    whether it carried an Authorization header (credentials must never follow a redirect to
    another host)."""

    def __init__(self, root: pathlib.Path, port: int | None = None):
        self.root = pathlib.Path(root)
        self.port = port or free_port()
        self.requests = []  # dicts: method, path, authorization (the header or None), range
        self._server = None
        self._thread = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> "StorageFileServer":
        import http.server
        import threading

        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _serve(self, body: bool):
                owner.requests.append({"method": self.command, "path": self.path,
                                       "authorization": self.headers.get("Authorization"),
                                       "range": self.headers.get("Range")})
                rel = self.path.split("?", 1)[0].lstrip("/")
                path = (owner.root / rel).resolve()
                if owner.root.resolve() not in path.parents or not path.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                size = path.stat().st_size
                first, last, status = 0, size - 1, 200
                rng = self.headers.get("Range")
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
                if m:
                    first = int(m.group(1))
                    last = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                    status = 206
                self.send_response(status)
                self.send_header("Content-Length", str(last - first + 1))
                self.send_header("Content-Type", "application/octet-stream")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
                self.end_headers()
                if not body:
                    return
                with open(path, "rb") as f:
                    f.seek(first)
                    left = last - first + 1
                    while left > 0:
                        chunk = f.read(min(left, 1024 * 1024))
                        if not chunk:
                            break
                        self.wfile.write(chunk)
                        left -= len(chunk)

            def do_GET(self):
                self._serve(True)

            def do_HEAD(self):
                self._serve(False)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
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
