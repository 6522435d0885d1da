#!/usr/bin/env python3
"""Cold-pull benchmark on a limited path, run by hand: drayage against docker-registry in one run.

    scripts/install-deps.sh bench && ninja -C build
    /usr/bin/python3 bench/cold_bench.py [--build build] [--size-mib 1024] [--rounds 1]
        [--rate 50e6] [--delay-ms 10] [--clients 1,8] [--paths registry,s3,loopback]

A cold pull of one layer (fresh server, empty cache or storage, every time) by 1 and by 8 curl
clients at once, on three paths:
  registry  the origin is an upstream docker-registry (filesystem) behind the throttling proxy
            (harness/throttle.py: `--rate` bytes/s per connection, `--delay-ms` one way):
            drayage with that upstream, against docker-registry's proxy mode with that remoteurl;
  s3        the origin is the Swift bucket of a docker-registry, behind the throttling proxy:
            drayage reading the bucket (storage.s3), against that registry on the bucket (s3
            driver, redirect disabled so that it serves the bytes itself);
  loopback  the registry path without the throttling proxy (no limit, no delay).
For each: the aggregate throughput; the server's CPU-seconds (user + system, /proc/<pid>/stat read
before and after in the same run) per GB served to the clients (with one client, per GB filled);
the connections and bytes the origin saw through the proxy; the proxy's own CPU time, which
shows it is not the bottleneck. Ratios are drayage / peer (throughput: higher is better; CPU:
lower is better). Numbers vary 25% between runs on a shared machine: compare within a run.
"""
import argparse
import concurrent.futures
import pathlib
import shutil
import statistics
import sys
import tempfile
import time
import uuid

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from harness.drayage import Drayage  # noqa: E402
from harness.net import cpu_seconds  # noqa: E402
from harness.registry import MiB, Registry, s3_storage  # noqa: E402
from harness.swift import Swift  # noqa: E402
from harness.throttle import Throttle  # noqa: E402
from pull_bench import blob_url, curl_speed  # noqa: E402

SERVERS = ("drayage", "docker-registry")


class Origin:
    """One path's origin: what drayage and the peer are configured with, and the throttling proxy
    in front of it (None on loopback)."""

    def __init__(self, name: str, throttle: Throttle | None, drayage_config, peer_factory):
        self.name = name
        self.throttle = throttle
        self.drayage_config = drayage_config  # dict
        self.peer_factory = peer_factory  # workdir -> Registry (not started)


def cold_round(args, work: pathlib.Path, origin: Origin, server: str, digest: str, size: int,
               clients: int, n: int) -> dict:
    d = work / f"{origin.name}-{server}-{clients}-{n}"
    seen = origin.throttle.stats() if origin.throttle else None  # drayage may connect at start
    if server == "drayage":
        srv = Drayage(pathlib.Path(args.build) / "src" / "drayage", d,
                      origin.drayage_config).start()
    else:
        srv = origin.peer_factory(d).start()
    url = blob_url(srv.url, "bench/cold", digest)
    try:
        proxy_cpu = origin.throttle.cpu_seconds() if origin.throttle else 0.0
        cpu = cpu_seconds(srv.proc.pid)
        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            list(pool.map(lambda _: curl_speed(url), range(clients)))
        elapsed = time.monotonic() - start
        cpu = cpu_seconds(srv.proc.pid) - cpu
        row = {"throughput": clients * size / elapsed,
               "cpu_per_gb": cpu / (clients * size / 1e9)}
        if origin.throttle:
            after = origin.throttle.stats()
            row["connections"] = after["connections"] - seen["connections"]
            row["origin_bytes"] = after["bytes_down"] - seen["bytes_down"]
            row["proxy_cpu_share"] = (origin.throttle.cpu_seconds() - proxy_cpu) / elapsed
        return row
    finally:
        srv.stop()
        shutil.rmtree(d, ignore_errors=True)


def report(origin: Origin, clients: int, rows: dict, size: int) -> None:
    med = {s: {k: statistics.median(r[k] for r in rows[s]) for k in rows[s][0]} for s in rows}
    for s in SERVERS:
        m = med[s]
        line = (f"   {origin.name:8s} {clients} client(s) {s:16s} {m['throughput'] / 1e6:8.1f} MB/s"
                f"   {m['cpu_per_gb']:5.2f} CPU-s/GB")
        if "connections" in m:
            line += (f"   origin: {m['connections']:.0f} conn, {m['origin_bytes'] / size:4.2f}x "
                     f"the layer   throttle CPU {m['proxy_cpu_share'] * 100:4.1f}%")
        print(line)
    d, p = med["drayage"], med["docker-registry"]
    print(f"   {'':8s} {'':11s} drayage/peer: throughput {d['throughput'] / p['throughput']:5.2f}"
          f"   CPU per GB {d['cpu_per_gb'] / p['cpu_per_gb']:5.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=str(ROOT / "build"))
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--rate", type=float, default=50e6, help="bytes/s per origin connection")
    ap.add_argument("--delay-ms", type=float, default=10.0, help="added one-way delay")
    ap.add_argument("--clients", default="1,8")
    ap.add_argument("--paths", default="registry,s3,loopback")
    args = ap.parse_args()
    paths = args.paths.split(",")
    client_counts = [int(x) for x in args.clients.split(",")]
    size = args.size_mib * MiB
    work = pathlib.Path(tempfile.mkdtemp(prefix="drayage-cold-bench-"))
    stop = []
    try:
        origins = []
        upstream = Registry(work / "upstream").start()
        stop.append(upstream)
        print(f"pushing a {args.size_mib} MiB layer to the upstream registry ...", flush=True)
        digest = upstream.push_image("bench/cold", "v1", [size], seed=17).layers[0].digest
        cache = {"max_size": f"{args.size_mib * 2 + 512}MiB"}
        for name in ("registry", "loopback"):
            if name not in paths:
                continue
            throttle = None
            url = upstream.url
            if name == "registry":
                throttle = Throttle(args.build, "127.0.0.1", upstream.port, args.rate,
                                    args.delay_ms).start()
                stop.append(throttle)
                url = throttle.endpoint
            origins.append(Origin(
                name, throttle,
                {"upstream": {"url": url}, "cache": cache, "log": {"level": "warn"}},
                lambda wd, url=url: Registry(wd, proxy_remoteurl=url)))

        if "s3" in paths:
            swift = Swift(work / "swift").start()
            stop.append(swift)
            root = f"/cold-{uuid.uuid4().hex[:8]}"
            no_redirect = {"storage": {"redirect": {"disable": True}}}
            on_bucket = Registry(work / "on-bucket", s3=s3_storage(swift, root),
                                 extra=no_redirect).start()
            stop.append(on_bucket)
            print("pushing the layer to a registry on the bucket ...", flush=True)
            s3_digest = on_bucket.push_image("bench/cold", "v1", [size], seed=17).layers[0].digest
            assert s3_digest == digest, "the same seed gives the same layer"
            throttle = Throttle(args.build, "127.0.0.1", swift.port, args.rate,
                                args.delay_ms).start()
            stop.append(throttle)
            through = dict(s3_storage(swift, root), regionendpoint=throttle.endpoint)
            origins.append(Origin(
                "s3", throttle,
                {"upstream": {"url": on_bucket.url},
                 "storage": {"s3": dict(through, chunksize="5MiB")}, "cache": cache,
                 "log": {"level": "warn"}},
                lambda wd, through=through: Registry(wd, s3=through, extra=no_redirect)))

        print(f"\ncold pull of a {args.size_mib} MiB layer; limited paths: {args.rate / 1e6:g} MB/s "
              f"per origin connection, {args.delay_ms:g} ms one way; median of {args.rounds}:",
              flush=True)
        n = 0
        for origin in origins:
            for clients in client_counts:
                rows = {s: [] for s in SERVERS}
                for _ in range(args.rounds):
                    for server in SERVERS:  # interleaved, round by round
                        n += 1
                        rows[server].append(cold_round(args, work, origin, server, digest, size,
                                                       clients, n))
                report(origin, clients, rows, size)
    finally:
        for s in reversed(stop):
            try:
                s.stop()
            except Exception:  # noqa: BLE001
                pass
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
