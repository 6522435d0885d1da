#!/usr/bin/env python3
"""Write-through benchmark, run by hand: CPU drayage spends on a cold pull of one blob from an
upstream docker-registry, with and without `storage.s3.writethrough` (the blob teed into Swift's
s3api bucket), for one or more drayage builds in the same run.

    /usr/bin/python3 bench/writethrough_bench.py [--size-mib 512] [--rounds 3] \\
        --build new=build [--build old=/path/to/older/build]

CPU is user + system seconds of the drayage process (all its threads, /proc/<pid>/stat) from
before the GET until the copy in the bucket is complete, per GB pulled; the median of the rounds.
Each round starts a fresh drayage with an empty cache and a fresh bucket prefix, and the builds
take turns round by round. "extra" is what write-through adds (with - without): the multipart
upload's signing, payload hashing and sending, plus any hashing of the bytes the write-through
does itself. CPU time moves much less than throughput on a shared machine; compare within a run.
"""
import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from harness.drayage import Drayage  # noqa: E402
from harness.net import cpu_seconds  # noqa: E402
from harness.registry import MiB, Registry  # noqa: E402
from harness.swift import Swift  # noqa: E402


def pull(url: str) -> None:
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", url],
                         capture_output=True, text=True)
    if out.stdout.strip() != "200":
        raise RuntimeError(f"{url}: HTTP {out.stdout} {out.stderr}")


def one_round(build: pathlib.Path, work: pathlib.Path, swift, upstream, layer, writethrough: bool,
              n: int) -> float:
    root = f"/wtbench-{os.getpid()}-{n}"
    d = Drayage(build / "src" / "drayage", work / f"d{n}", {
        "log": {"level": "info"},
        "upstream": {"url": upstream.url},
        "cache": {"max_size": "4GiB"},
        "storage": {"s3": {
            "accesskey": swift.access_key, "secretkey": swift.secret_key,
            "region": swift.region, "regionendpoint": swift.endpoint, "bucket": swift.bucket,
            "secure": False, "chunksize": "16MiB", "rootdirectory": root,
            "writethrough": writethrough}},
    }).start()
    try:
        before = cpu_seconds(d.proc.pid)
        pull(f"{d.url}/v2/bench/wt/blobs/{layer.digest}")
        if writethrough:
            deadline = time.monotonic() + 600
            while f"write-through of {layer.digest} to the bucket complete" not in d.log():
                if time.monotonic() > deadline:
                    raise RuntimeError("the write-through did not complete:\n" + d.log()[-2000:])
                time.sleep(0.05)
        return cpu_seconds(d.proc.pid) - before
    finally:
        d.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--build", action="append", default=[],
                    help="label=build-dir (repeatable); default new=build")
    args = ap.parse_args()
    builds = dict(b.split("=", 1) for b in (args.build or [f"new={ROOT / 'build'}"]))
    builds = {k: pathlib.Path(v).resolve() for k, v in builds.items()}
    for label, b in builds.items():
        if not (b / "src" / "drayage").exists():
            sys.exit(f"{label}: no {b}/src/drayage; build it first")
    work = pathlib.Path(tempfile.mkdtemp(prefix="drayage-wt-bench-"))
    swift = Swift().start()
    upstream = Registry(work / "up").start()
    try:
        print(f"pushing a {args.size_mib} MiB layer to the upstream ...", flush=True)
        layer = upstream.push_image("bench/wt", "v1", [args.size_mib * MiB], seed=7).layers[0]
        cpu = {(label, wt): [] for label in builds for wt in (False, True)}
        n = 0
        for _ in range(args.rounds):
            for label, b in builds.items():
                for wt in (False, True):
                    n += 1
                    cpu[(label, wt)].append(one_round(b, work, swift, upstream, layer, wt, n))
        gb = args.size_mib * MiB / 1e9
        print(f"\ncold pull of {args.size_mib} MiB, drayage CPU-seconds per GB "
              f"(median of {args.rounds}):")
        print(f"   {'build':10s} {'plain':>8s} {'writethrough':>13s} {'extra':>8s}")
        extra = {}
        for label in builds:
            plain = statistics.median(cpu[(label, False)]) / gb
            wt = statistics.median(cpu[(label, True)]) / gb
            extra[label] = wt - plain
            print(f"   {label:10s} {plain:8.2f} {wt:13.2f} {wt - plain:8.2f}")
        labels = list(builds)
        for other in labels[1:]:
            print(f"   extra {labels[0]}/{other} = {extra[labels[0]] / extra[other]:.2f}")
    finally:
        upstream.stop()
        swift.stop()


if __name__ == "__main__":
    main()
