#!/usr/bin/python3
"""Benchmark: 1 GiB through drayage's parallel multipart uploader (s3_tool mpu-put) at
concurrency 1, 4 and 8, against `aws s3 cp` of the same file, to the same Swift + s3api in one
run; then the same through the fault proxy limiting each connection to ~50 MB/s (what one
connection to real S3 gets), where parallel parts should scale.

Prints MB/s (10^6 bytes/s) and the peak RSS of the uploading process per row. Run by hand:

    DRAYAGE_BUILD_DIR=build /usr/bin/python3 bench/s3_upload.py [--size-mib 1024] [--rate 50e6]

Needs: ninja -C $DRAYAGE_BUILD_DIR tests/unit/s3/client/s3_tool; `aws` (awscli) on PATH.
"""
import argparse
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from harness.faultproxy import FaultProxy  # noqa: E402
from harness.swift import Swift  # noqa: E402

MiB = 1024 * 1024


def run_measured(argv, env=None):
    """Runs argv; returns (seconds, peak RSS KiB of that process tree's largest process, rc)."""
    start = time.monotonic()
    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate()
    elapsed = time.monotonic() - start
    # RUSAGE_CHILDREN is a high-water mark over all waited-for children: run each row in a
    # fresh helper (`time -f`) instead so rows do not mask each other.
    return elapsed, out.decode(), err.decode(), p.returncode


def timed(argv, env=None):
    tfile = tempfile.NamedTemporaryFile(delete=False)
    tfile.close()
    elapsed, out, err, rc = run_measured(["/usr/bin/time", "-f", "%M", "-o", tfile.name, *argv],
                                         env=env)
    rss = int(pathlib.Path(tfile.name).read_text().strip().splitlines()[-1] or 0)
    os.unlink(tfile.name)
    if rc != 0:
        raise RuntimeError(f"{argv[0]} failed ({rc}): {err[-2000:]}")
    return elapsed, rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rate", type=float, default=50e6, help="bytes/s per connection (proxy)")
    ap.add_argument("--chunksize-mib", type=int, default=10)
    a = ap.parse_args()

    build = pathlib.Path(os.environ.get("DRAYAGE_BUILD_DIR", ROOT / "build")).resolve()
    tool = build / "tests" / "unit" / "s3" / "client" / "s3_tool"
    if not tool.exists():
        sys.exit(f"no {tool}; build it first")
    if shutil.which("aws") is None:
        sys.exit("no aws on PATH")

    work = pathlib.Path(tempfile.mkdtemp(prefix="drayage-bench-"))
    swift = Swift().start()
    proxy = FaultProxy("127.0.0.1", swift.port).start()
    try:
        src = work / "blob"
        with open(src, "wb") as f:
            block = os.urandom(64 * MiB)
            for i in range(a.size_mib // 64):
                f.write(block[i:] + block[:i])  # distinct 64 MiB blocks, cheap to make
        size = src.stat().st_size

        def config(endpoint, concurrency):
            path = work / f"c-{concurrency}-{endpoint.rsplit(':', 1)[1]}.yml"
            path.write_text(yaml.safe_dump({
                "accesskey": swift.access_key, "secretkey": swift.secret_key,
                "region": swift.region, "regionendpoint": endpoint, "bucket": swift.bucket,
                "secure": False, "chunksize": a.chunksize_mib * MiB,
                "multipart": {"concurrency": concurrency},
            }))
            return path

        aws_env = dict(os.environ, AWS_ACCESS_KEY_ID=swift.access_key,
                       AWS_SECRET_ACCESS_KEY=swift.secret_key, AWS_DEFAULT_REGION=swift.region)
        aws_env.pop("AWS_CA_BUNDLE", None)

        print(f"{size / MiB:.0f} MiB, chunksize {a.chunksize_mib} MiB, Swift {swift.endpoint}")
        print(f"{'path':<22} {'uploader':<24} {'MB/s':>8} {'peak RSS MiB':>13}")
        for label, endpoint in (("direct", swift.endpoint),
                                (f"proxy {a.rate / 1e6:.0f} MB/s/conn", proxy.endpoint)):
            proxy.rate = a.rate
            rows = [(f"drayage mpu c={c}",
                     [str(tool), str(config(endpoint, c)), "mpu-put", f"bench/c{c}", str(src)],
                     None) for c in (1, 4, 8)]
            rows.append(("aws s3 cp (c=10, 8MB)",
                         ["aws", "--endpoint-url", endpoint, "s3", "cp", "--only-show-errors",
                          str(src), f"s3://{swift.bucket}/bench/aws"], aws_env))
            for name, argv, env in rows:
                secs, rss = timed(argv, env)
                print(f"{label:<22} {name:<24} {size / secs / 1e6:>8.1f} {rss / 1024:>13.1f}",
                      flush=True)
    finally:
        proxy.stop()
        swift.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
