"""The limited path between drayage and an origin: a throttling, delaying TCP proxy.

The kernel here has no netem or fq qdisc, so a slow, distant link is made in user space, by
`throttle_proxy` (throttle_proxy.cpp next to this file, built by meson into BUILD/tests/; C++ so
that 8 connections at 50 MB/s cost little CPU on a 2-core machine shared with what it measures).
Each connection through it gets its own connection to the origin and, in each direction:
  - a rate limit of `rate` bytes/s (None: unlimited), modelled as a link that sends one chunk
    after the other: a chunk of n bytes is on the wire for n / rate seconds, so N bytes take at
    least N / rate;
  - a one-way delay of `delay_ms`: a chunk is delivered that long after it left the link, and the
    origin connection is opened that long after the client connected (the SYN's trip). A request
    and its answer therefore wait at least 2 x delay_ms more than on loopback.
The source is read at most 20 ms of link time ahead, and bytes held per direction are bounded
(rate x (delay + 20 ms) + 1 MiB): past that the proxy stops reading the side, so TCP flow control
reaches the sender as on a real link. A FIN is passed on after the
bytes before it; a reset (or error) on either side is passed on at once as a reset to the other.

Counters (`stats()`): `connections` accepted (each is one connection the origin saw), `open` now,
`bytes_up` (to the origin), `bytes_down`. `cpu_seconds()` is the proxy's own CPU time (/proc).

    with Throttle(build_dir, "127.0.0.1", origin_port, rate=50e6, delay_ms=10) as t:
        ... point drayage at t.endpoint ...; t.stats()["connections"]

By hand: BUILD/tests/throttle_proxy --upstream 127.0.0.1:PORT --rate 50e6 --delay-ms 10
(prints "listening PORT", then answers each line "stats" on stdin with one JSON line).
"""
import json
import pathlib
import subprocess
from typing import Optional

from .net import cpu_seconds, terminate


class Throttle:
    """The proxy as a child process in front of `host:port` (see the module doc)."""

    def __init__(self, build_dir: pathlib.Path, host: str, port: int, rate: Optional[float] = None,
                 delay_ms: float = 0.0):
        self.binary = pathlib.Path(build_dir) / "tests" / "throttle_proxy"
        self.upstream = (host, port)
        self.rate = rate
        self.delay_ms = delay_ms
        self.port = 0  # known once it listens (on a port the kernel picks)
        self.proc: Optional[subprocess.Popen] = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "Throttle":
        if not self.binary.exists():
            raise RuntimeError(f"no {self.binary}: build it first (ninja -C BUILD)")
        argv = [str(self.binary), "--upstream", f"{self.upstream[0]}:{self.upstream[1]}",
                "--port", "0", "--rate", str(self.rate or 0),
                "--delay-ms", str(self.delay_ms)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("listening "):
            terminate(self.proc)
            raise RuntimeError(f"{self.binary} did not start (said {line!r})")
        self.port = int(line.split()[1])
        return self

    def stats(self) -> dict:
        """connections (accepted so far: what the origin saw), open, bytes_up, bytes_down."""
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        terminate(self.proc, timeout=10)
        self.proc.stdout.close()
        self.proc = None

    def __enter__(self) -> "Throttle":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

