#!/usr/bin/env python3
"""What the repository/digest proof costs an open mirror (no auth), run by hand: instructions per
cache hit (callgrind) of two drayage binaries in one run, and the origin requests of a first hit.

    /usr/bin/python3 bench/hit_proof_bench.py BEFORE_BINARY AFTER_BINARY... [--hits 400]

A binary may be given as LABEL=PATH (e.g. main=/work/main/build/src/drayage); the others are
labelled before, after, after2, ... Every binary after the first is compared with the first.
Each binary runs under callgrind with http.workers 0 (every hit on the main loop) in front of a
docker-registry; a 16 KiB and a 1 MiB blob are cached and proven first, then the counters are
zeroed and --hits GETs of each on one kept-alive connection are counted. Instruction counts are
deterministic enough to compare builds on a shared machine, where timings are not.
"""
import argparse
import pathlib
import re
import subprocess
import sys
import tempfile

import requests

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from harness.drayage import Drayage  # noqa: E402
from harness.registry import KiB, MiB, Registry  # noqa: E402


def instructions(out_dir: pathlib.Path, pid: int) -> int:
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    total = 0
    for f in out_dir.glob(f"cg.{pid}*"):
        for line in f.read_text(errors="replace").splitlines():
            m = re.match(r"(?:summary|totals): (\d+)", line)
            if m:
                total = max(total, int(m.group(1)))
    return total


def measure(binary: str, reg: Registry, image, work: pathlib.Path, hits: int) -> dict:
    out_dir = work / "cg"
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapper = work / "drayage.sh"
    wrapper.write_text("#!/bin/sh\nexec valgrind --tool=callgrind --collect-atstart=yes "
                       f"--callgrind-out-file={out_dir}/cg.%p {binary} \"$@\"\n")
    wrapper.chmod(0o755)
    d = Drayage(wrapper, work / "d", {"upstream": {"url": reg.url}, "http": {"workers": 0}})
    d.start()
    try:
        result = {}
        with requests.Session() as s:
            for layer in image.layers:
                url = f"{d.url}/v2/{image.repo}/blobs/{layer.digest}"
                assert s.get(url, timeout=120).status_code == 200  # miss, fill, proof
                assert s.get(url, timeout=120).status_code == 200
                subprocess.run(["callgrind_control", "-z", str(d.proc.pid)], check=True,
                               capture_output=True)
                for f in out_dir.glob(f"cg.{d.proc.pid}*"):
                    f.unlink()
                for _ in range(hits):
                    r = s.get(url, timeout=120)
                    assert r.status_code == 200 and len(r.content) == layer.size
                result[layer.size] = instructions(out_dir, d.proc.pid) / hits
        return result
    finally:
        d.stop(timeout=120)


def labelled(binaries: list) -> list:
    out = []
    for i, b in enumerate(binaries):
        label, sep, path = b.partition("=")
        if not sep:
            label, path = ("before" if i == 0 else "after" if i == 1 else f"after{i}"), b
        out.append((label, path))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("binaries", nargs="+", metavar="BINARY",
                    help="the first is the baseline; LABEL=PATH names one")
    ap.add_argument("--hits", type=int, default=400)
    args = ap.parse_args()
    if len(args.binaries) < 2:
        ap.error("give a baseline binary and at least one to compare with it")
    binaries = labelled(args.binaries)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        reg = Registry(tmp / "reg").start()
        try:
            image = reg.push_image("bench/app", "v1", [16 * KiB, MiB], seed=3)
            rows = [(label, measure(b, reg, image, tmp / f"run{i}", args.hits))
                    for i, (label, b) in enumerate(binaries)]
        finally:
            reg.stop()
    base_label, base = rows[0]
    for size in (16 * KiB, MiB):
        parts = [f"{base_label} {base[size]:,.0f}"]
        for label, row in rows[1:]:
            change = (row[size] - base[size]) / base[size] * 100
            parts.append(f"{label} {row[size]:,.0f} ({change:+.1f}%)")
        print(f"{size // KiB:>5} KiB hit, instructions: " + ", ".join(parts))


if __name__ == "__main__":
    main()
