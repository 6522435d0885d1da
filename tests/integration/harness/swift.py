"""A one-node OpenStack Swift with s3api on 127.0.0.1, for tests that need a real S3 peer.

Layout and settings follow /work/shared/TESTBED.md: account, container and object servers
(`workers = 1`, `mount_check = false`), rings built with swift-ring-builder, memcached, tempauth
user `test:tester` / `testing`, s3api with `location = us-east-1`. Everything lives under one temp
dir and listens on ports picked at start.

The proxy runs with `-v` and a custom access-log template, so each request it serves is one line
on its output (stdout or stderr, depending on buffering; both are read) that tests parse with
`requests()`:

    S3LOG <method> <path-with-query> <status> <start_time> <end_time> <request_time> <bytes_in>
          <bytes_out> <source>

The first proxy-logging in the pipeline logs what the S3 client sent (source "-"); the second logs
Swift subrequests s3api makes (paths under /v1/). `s3_requests()` keeps only the former.

The proxy logs a request after its response has gone out, so a client may have its answer before
the line is written: `requests()` first sends a request of its own (a sentinel, left out of what it
returns) and waits for its line, by which time the requests answered before it are logged too.

Use the session fixture `swift` (import it into a test module: `from harness.swift import swift`).
"""
import atexit
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass

import pytest

from .net import free_port, wait_for_port, wait_until

ACCESS_KEY = "test:tester"
SENTINEL = "drayage-sentinel"  # in the path of the requests sync() sends
SECRET_KEY = "testing"
REGION = "us-east-1"


@dataclass
class LogRecord:
    method: str
    path: str  # with query string, as sent
    status: int
    start: float  # epoch seconds, request received
    end: float  # epoch seconds, response finished
    duration: float
    bytes_in: int
    bytes_out: int
    source: str

    @property
    def query(self) -> str:
        return self.path.split("?", 1)[1] if "?" in self.path else ""


class Swift:
    def __init__(self, workdir: pathlib.Path | None = None):
        self._own_dir = workdir is None
        self.dir = pathlib.Path(workdir or tempfile.mkdtemp(prefix="drayage-swift-"))
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports = {k: free_port() for k in ("proxy", "account", "container", "object",
                                               "memcached")}
        self.port = self.ports["proxy"]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.access_key = ACCESS_KEY
        self.secret_key = SECRET_KEY
        self.region = REGION
        self.bucket = "drayage-test"
        self._log_lock = threading.Lock()
        self._log_lines: list[str] = []
        self._reader: threading.Thread | None = None

    # ---- configuration ------------------------------------------------------------------
    def _write_configs(self) -> None:
        d = self.dir
        (d / "devices" / "d1").mkdir(parents=True, exist_ok=True)
        (d / "run").mkdir(exist_ok=True)
        (d / "swift.conf").write_text(
            "[swift-hash]\nswift_hash_path_suffix = drayage-test\n"
            "swift_hash_path_prefix = drayage-test\n\n"
            "[storage-policy:0]\nname = Policy-0\ndefault = yes\n")
        common = (f"swift_dir = {d}\ndevices = {d / 'devices'}\nmount_check = false\n"
                  "disable_fallocate = true\nworkers = 1\nuser = root\nbind_ip = 127.0.0.1\n"
                  "log_level = WARNING\n")
        for kind in ("account", "container", "object"):
            (d / f"{kind}-server.conf").write_text(
                f"[DEFAULT]\n{common}bind_port = {self.ports[kind]}\n\n"
                f"[pipeline:main]\npipeline = {kind}-server\n\n"
                f"[app:{kind}-server]\nuse = egg:swift#{kind}\n\n"
                f"[{kind}-replicator]\n[{kind}-auditor]\n"
                + ("[container-updater]\n[container-sync]\n" if kind == "container" else "")
                + ("[object-updater]\n" if kind == "object" else ""))
        (d / "proxy-server.conf").write_text(f"""[DEFAULT]
swift_dir = {d}
bind_ip = 127.0.0.1
bind_port = {self.port}
workers = 1
user = root
log_level = INFO

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats s3api tempauth copy slo dlo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
allow_account_management = true

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:gatekeeper]
use = egg:swift#gatekeeper

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:proxy-logging]
use = egg:swift#proxy_logging
access_log_level = INFO
log_msg_template = S3LOG {{method}} {{path}} {{status_int}} {{start_time}} {{end_time}} {{request_time}} {{bytes_recvd}} {{bytes_sent}} {{source}}

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:{self.ports['memcached']}

[filter:listing_formats]
use = egg:swift#listing_formats

[filter:s3api]
use = egg:swift#s3api
location = {REGION}
allow_multipart_uploads = true
min_segment_size = 5242880
max_upload_part_num = 10000

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = {SECRET_KEY} .admin

[filter:copy]
use = egg:swift#copy

[filter:slo]
use = egg:swift#slo

[filter:dlo]
use = egg:swift#dlo
""")

    def _build_rings(self) -> None:
        for kind in ("account", "container", "object"):
            builder = str(self.dir / f"{kind}.builder")
            for args in (["create", "6", "1", "1"],
                         ["add", f"r1z1-127.0.0.1:{self.ports[kind]}/d1", "100"],
                         ["rebalance"]):
                r = subprocess.run(["swift-ring-builder", builder, *args], cwd=self.dir,
                                   capture_output=True, text=True)
                # rebalance exits 1 with a warning on a one-device ring; the ring is still written.
                if r.returncode not in (0, 1):
                    raise RuntimeError(f"swift-ring-builder {args}: {r.stdout}{r.stderr}")
            if not (self.dir / f"{kind}.ring.gz").exists():
                raise RuntimeError(f"{kind}.ring.gz was not written")

    # ---- processes ----------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], capture_stdout: bool = False) -> None:
        log = open(self.dir / f"{name}.log", "ab")
        # Unbuffered: the access log is read line by line as requests complete.
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(argv, cwd=self.dir, env=env,
                                stdout=subprocess.PIPE if capture_stdout else log,
                                stderr=subprocess.STDOUT if capture_stdout else log,
                                start_new_session=True)
        proc._drayage_log = log  # closed in stop()
        self.procs[name] = proc

    def _read_proxy_stdout(self, proc: subprocess.Popen) -> None:
        with open(self.dir / "proxy-out.log", "ab") as out:
            for raw in proc.stdout:
                out.write(raw)
                out.flush()
                line = raw.decode(errors="replace")
                if "S3LOG " in line:
                    with self._log_lock:
                        self._log_lines.append(line[line.index("S3LOG "):].strip())

    def logs(self) -> str:
        parts = []
        for f in sorted(self.dir.glob("*.log")):
            parts.append(f"--- {f.name}\n{f.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def start(self, timeout: float = 60.0) -> "Swift":
        # A script that dies without calling stop() must not leave servers behind.
        atexit.register(self.stop)
        try:
            self._write_configs()
            self._build_rings()
            self._spawn("memcached", ["memcached", "-u", "root", "-l", "127.0.0.1", "-p",
                                      str(self.ports["memcached"]), "-U", "0", "-m", "64"])
            for kind in ("account", "container", "object"):
                self._spawn(kind, [f"swift-{kind}-server", str(self.dir / f"{kind}-server.conf")])
            self._spawn("proxy", ["swift-proxy-server", str(self.dir / "proxy-server.conf"), "-v"],
                        capture_stdout=True)
            self._reader = threading.Thread(target=self._read_proxy_stdout,
                                            args=(self.procs["proxy"],), daemon=True)
            self._reader.start()
            for name in ("memcached", "account", "container", "object", "proxy"):
                wait_for_port(self.ports[name], timeout=timeout, proc=self.procs[name], what=name)
            self._wait_healthy(timeout)
            self._create_bucket(timeout)
        except Exception as e:
            logs = self.logs()
            self.stop()
            raise RuntimeError(f"Swift failed to start: {e}\n{logs}") from e
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.endpoint + "/healthcheck", timeout=2) as r:
                    if r.status == 200:
                        return
            except Exception as e:  # noqa: BLE001 - any failure means "not yet"
                last = e
            time.sleep(0.1)
        raise TimeoutError(f"proxy not healthy: {last}")

    def client(self, endpoint: str | None = None, access_key: str | None = None,
               secret_key: str | None = None):
        """A botocore S3 client (path-style, SigV4) for setup and checks."""
        import botocore.session
        from botocore.config import Config
        session = botocore.session.get_session()
        return session.create_client(
            "s3", region_name=self.region, endpoint_url=endpoint or self.endpoint,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                          retries={"max_attempts": 1}))

    def _create_bucket(self, timeout: float) -> None:
        # The account is auto-created on first use; the first request may race the servers'
        # startup, so retry for a while.
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.client().create_bucket(Bucket=self.bucket)
                return
            except Exception as e:  # noqa: BLE001
                if "BucketAlreadyOwnedByYou" in str(e) or "BucketAlreadyExists" in str(e):
                    return
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        for name in ("proxy", "object", "container", "account", "memcached"):
            proc = self.procs.pop(name, None)
            if proc is None:
                continue
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            proc._drayage_log.close()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    # ---- access log ---------------------------------------------------------------------
    def log_mark(self) -> int:
        """Position in the access log; pass to requests() to see only what came after."""
        with self._log_lock:
            return len(self._log_lines)

    def sync(self, timeout: float = 30.0) -> None:
        """Waits until the access log holds the line of every request answered before this call
        (see the module docstring)."""
        path = f"/{SENTINEL}-{uuid.uuid4().hex}"
        try:  # unsigned: not an S3 request, and refused, but logged like any other
            urllib.request.urlopen(self.endpoint + path, timeout=30).close()
        except urllib.error.HTTPError:
            pass

        def logged() -> bool:
            with self._log_lock:
                return any(path in line for line in self._log_lines)
        wait_until(logged, f"the Swift proxy to log {path}", timeout)

    def requests(self, since: int = 0) -> list[LogRecord]:
        """Access-log records after `since`, once every request answered before the call is
        logged (sync())."""
        self.sync()
        with self._log_lock:
            lines = self._log_lines[since:]
        out = []
        for line in lines:
            f = line.split()
            if len(f) < 10 or SENTINEL in f[2]:
                continue
            # The template quotes the path once more; one unquote gives the wire form.
            out.append(LogRecord(method=f[1], path=urllib.request.unquote(f[2]), status=int(f[3]),
                                 start=float(f[4]), end=float(f[5]), duration=float(f[6]),
                                 bytes_in=int(f[7]) if f[7].isdigit() else 0,
                                 bytes_out=int(f[8]) if f[8].isdigit() else 0, source=f[9]))
        return out

    def s3_requests(self, since: int = 0) -> list[LogRecord]:
        """Only the requests the S3 client sent (not s3api's Swift subrequests)."""
        return [r for r in self.requests(since)
                if not r.path.startswith("/v1/") and r.path != "/healthcheck"
                and r.source in ("-", "")]


@pytest.fixture(scope="session")
def swift():
    s = Swift().start()
    yield s
    s.stop()


if __name__ == "__main__":  # manual use: python3 -m harness.swift (from tests/integration)
    import sys
    # SIGTERM exits through atexit, which stops the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    s = Swift().start()
    print(f"endpoint {s.endpoint} bucket {s.bucket} dir {s.dir}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        s.stop()
