"""Runs build/drayage with a generated config on a free loopback port."""
import copy
import os
import pathlib
import re
import resource
import subprocess
import time
import uuid

import requests
import yaml

from .net import free_port, wait_for_port, wait_until, terminate

# The path of the requests sync_log() sends; access() leaves them out.
SENTINEL = "/drayage-sentinel-"
# One access line: access peer=P method=M path="PATH" status=S in=I out=O ms=T outcome=X[ user=U]
_ACCESS = re.compile(r' access peer=\S+ method=(?P<method>\S+) path="(?P<path>[^"]*)" '
                     r'status=(?P<status>\d+) .*? outcome=(?P<outcome>\S+)'
                     r'(?: user=(?P<user>\S+))?$')


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


class Drayage:
    """One drayage process. `config` is merged over a minimal local default (no upstream)."""

    def __init__(self, binary: pathlib.Path, workdir: pathlib.Path, config: dict, env=None,
                 nofile: tuple[int, int] | None = None):
        """`nofile`: (soft, hard) RLIMIT_NOFILE the process starts with; None: inherited."""
        self.binary = pathlib.Path(binary)
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        base = {
            "log": {"level": "info"},
            "http": {"addr": f"127.0.0.1:{self.port}"},
            "cache": {"path": str(self.workdir / "cache"), "max_size": "1GiB"},
            "upstream": {"url": ""},
        }
        self.config = deep_merge(base, config or {})
        if "addr" in self.config.get("http", {}):
            self.port = int(str(self.config["http"]["addr"]).rsplit(":", 1)[1])
        self.config_path = self.workdir / "drayage.yml"
        self.log_path = self.workdir / "drayage.log"
        self.env = env
        self.nofile = nofile
        self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> "Drayage":
        self.config_path.write_text(yaml.safe_dump(self.config))
        env = dict(os.environ)
        env.update(self.env or {})
        self._log = open(self.log_path, "ab")
        nofile = self.nofile
        self.proc = subprocess.Popen(
            [str(self.binary), "--config", str(self.config_path)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env,
            preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile))
            if nofile else None)
        if wait:
            try:
                wait_for_port(self.port, proc=self.proc, what="drayage")
            except Exception:
                self.stop()
                raise RuntimeError("drayage failed to start:\n" + self.log())
        return self

    def metric(self, name: str, labels: str = "") -> float:
        """The sum of metric `name` over its series whose labels contain `labels`
        (e.g. 'kind="blob",outcome="hit"'); 0 when there is none."""
        total = 0.0
        for line in requests.get(self.url + "/metrics", timeout=10).text.splitlines():
            if not (line.startswith(name + " ") or line.startswith(name + "{")):
                continue
            if labels and labels not in line.split("}", 1)[0]:
                continue
            total += float(line.rsplit(" ", 1)[1])
        return total

    def log(self) -> str:
        """The log so far. A running drayage writes its log in batches (every 100 ms; warnings
        and errors at once), so this first waits until the file has stopped growing for 0.4 s:
        the lines of requests already answered are then in."""
        def size() -> int:
            try:
                return self.log_path.stat().st_size
            except FileNotFoundError:
                return 0
        if self.proc is not None and self.proc.poll() is None:
            deadline = time.monotonic() + 10
            seen = -1
            while (now := size()) != seen and time.monotonic() < deadline:
                seen = now
                time.sleep(0.4)
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def sync_log(self, timeout: float = 30.0) -> str:
        """The log once it holds the line of every request answered before this call, so that
        what is not in it did not happen. drayage queues a request's access line before the
        response has gone out and writes its lines in the order they were queued: this sends a
        request of its own (a sentinel, answered 404) and waits for that line."""
        path = SENTINEL + uuid.uuid4().hex
        requests.get(self.url + path, timeout=timeout)
        wait_until(lambda: f'path="{path}"' in self.log_path.read_text(errors="replace"),
                   f"drayage to log {path}", timeout)
        return self.log_path.read_text(errors="replace")

    def access(self, path_part: str = "") -> list[dict]:
        """The access lines (dicts: method, path, status, outcome, user) of the requests whose
        path contains `path_part`, in order, once every request answered so far is logged
        (sync_log())."""
        out = []
        for line in self.sync_log().splitlines():
            m = _ACCESS.search(line)
            if m and path_part in m.group("path") and SENTINEL not in m.group("path"):
                rec = m.groupdict()
                rec["status"] = int(rec["status"])
                out.append(rec)
        return out

    def signal(self, sig) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        terminate(self.proc, timeout=timeout)
        self._log.close()
        return self.proc.returncode
