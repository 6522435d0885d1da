"""Push benchmark (by hand, not a test): one 1 GiB blob pushed through drayage and directly to
docker-registry, both storing into the same Swift s3api bucket, with the same method (curl: POST an
upload session, then one PUT ?digest= with the whole body). Then both again with the fault proxy
between them and Swift, limiting every connection to RATE bytes/s (like one connection to real S3).
Prints MB/s, ratios and drayage's peak RSS.

Run: bench/push_bench.sh [build-dir]   (SIZE_MIB and RATE_MBS in the environment override)
"""
import hashlib
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import requests

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))

from harness.drayage import Drayage  # noqa: E402
from harness.faultproxy import FaultProxy  # noqa: E402
from harness.net import peak_rss_kib  # noqa: E402
from harness.registry import Registry  # noqa: E402
from harness.swift import Swift  # noqa: E402

MiB = 1024 * 1024
SIZE = int(os.environ.get("SIZE_MIB", "1024")) * MiB
RATE = float(os.environ.get("RATE_MBS", "50")) * 1e6
CHUNK = 10 * MiB
CONCURRENCY = 8


def make_blob(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    block = hashlib.sha512(b"bench").digest() * 16384  # 1 MiB, then varied per MiB
    with open(path, "wb") as f:
        for i in range(SIZE // MiB):
            piece = i.to_bytes(8, "little") + block[8:]
            f.write(piece)
            h.update(piece)
    return "sha256:" + h.hexdigest()


def push(base_url: str, repo: str, path: pathlib.Path, digest: str) -> float:
    r = requests.post(f"{base_url}/v2/{repo}/blobs/uploads/", timeout=30)
    r.raise_for_status()
    loc = r.headers["Location"]
    if loc.startswith("/"):
        loc = base_url + loc
    sep = "&" if "?" in loc else "?"
    t0 = time.monotonic()
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT",
                          "-H", "Content-Type: application/octet-stream", "-T", str(path),
                          f"{loc}{sep}digest={digest}"], capture_output=True, text=True)
    dt = time.monotonic() - t0
    if out.stdout.strip() != "201":
        raise RuntimeError(f"push to {base_url} answered {out.stdout} {out.stderr}")
    return SIZE / dt / 1e6


def main():
    build = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else HERE.parent / "build").resolve()
    work = pathlib.Path(tempfile.mkdtemp(prefix="drayage-push-bench-"))
    swift = Swift().start()
    procs = []
    try:
        blob = work / "blob.bin"
        digest = make_blob(blob)
        results = {}
        for label, rate in (("direct", None), (f"{RATE / 1e6:.0f} MB/s per connection", RATE)):
            proxy = FaultProxy("127.0.0.1", swift.port).start()
            proxy.rate = rate
            root = f"bench{int(time.time() * 1000) % 10**9}"
            reg = Registry(work / f"reg-{root}", s3={
                "accesskey": swift.access_key, "secretkey": swift.secret_key,
                "region": swift.region, "regionendpoint": proxy.endpoint,
                "bucket": swift.bucket, "secure": False, "v4auth": True, "chunksize": CHUNK,
                "rootdirectory": "/" + root + "reg"}).start()
            d = Drayage(build / "src" / "drayage", work / f"drayage-{root}", {
                "log": {"level": "warn"},
                "upstream": {"url": reg.url},
                # Smaller than the blob: the read-back into the cache is skipped, so the RSS
                # is the push path's.
                "cache": {"max_size": "512MiB"},
                "storage": {"s3": {
                    "accesskey": swift.access_key, "secretkey": swift.secret_key,
                    "region": swift.region, "regionendpoint": proxy.endpoint,
                    "bucket": swift.bucket, "secure": False, "chunksize": CHUNK,
                    "rootdirectory": "/" + root + "dray",
                    "multipart": {"concurrency": CONCURRENCY}}},
            }).start()
            procs += [reg, d]
            dray = push(d.url, "bench/a", blob, digest)
            regs = push(reg.url, "bench/a", blob, digest)
            rss = peak_rss_kib(d.proc.pid) / 1024
            results[label] = (dray, regs, rss)
            d.stop()
            reg.stop()
            proxy.stop()
        print(f"\n1 blob of {SIZE / MiB:.0f} MiB, chunksize {CHUNK // MiB} MiB, drayage "
              f"concurrency {CONCURRENCY}, curl POST + PUT ?digest= (same for both)")
        print(f"{'link to S3':<28}{'drayage MB/s':>14}{'registry MB/s':>15}{'ratio':>8}"
              f"{'drayage peak RSS':>19}")
        for label, (dray, regs, rss) in results.items():
            print(f"{label:<28}{dray:>14.1f}{regs:>15.1f}{dray / regs:>8.2f}{rss:>15.0f} MiB")
    finally:
        for p in procs:
            p.stop()
        swift.stop()
        subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    main()
