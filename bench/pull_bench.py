#!/usr/bin/env python3
"""Pull-path benchmark, run by hand: drayage against nginx and docker-registry in one run.

    scripts/install-deps.sh bench && ninja -C build
    /usr/bin/python3 bench/pull_bench.py [--build build] [--big-mib 1024] [--rounds 3]

Measures, on this machine, interleaving the servers round by round and reporting medians:
  1. cache-hit GET of a 1 GiB blob by one client (curl): nginx sendfile on / off, docker-registry
     (filesystem), drayage (LMDB cache hit);
  2. 1 MiB and 16 KiB blobs with wrk at 64 connections for 10 s each: the same four;
  3. cold pull of the 1 GiB blob from an upstream docker-registry by 1 and by 8 clients at once:
     drayage (empty cache each round) vs docker-registry's proxy mode (empty storage each round),
     counting the upstream's blob GETs;
  4. peak RSS (VmHWM) of every server.
Ratios are drayage / peer. Numbers vary 25% between runs on a shared machine: compare within a run.
"""
import argparse
import concurrent.futures
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from harness.drayage import Drayage  # noqa: E402
from harness.net import free_port, peak_rss_kib, wait_for_port  # noqa: E402
from harness.registry import MiB, Registry  # noqa: E402


def curl_speed(url: str) -> float:
    """Bytes/s of one GET to /dev/null."""
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{speed_download} %{http_code}",
                          url], capture_output=True, text=True, check=True).stdout.split()
    if out[1] != "200":
        raise RuntimeError(f"{url}: HTTP {out[1]}")
    return float(out[0])


def wrk_rps(url: str, seconds: int = 10, conns: int = 64) -> float:
    out = subprocess.run(["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", url], capture_output=True,
                         text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    raise RuntimeError("wrk printed no Requests/sec:\n" + out)


class Nginx:
    def __init__(self, workdir: pathlib.Path, docroot: pathlib.Path, sendfile: bool):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = self.dir / "nginx.conf"
        conf.write_text(f"""
user root;
worker_processes 2;
daemon off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile {'on' if sendfile else 'off'};
  tcp_nopush on;
  keepalive_requests 100000;
  client_body_temp_path {self.dir}/body;
  proxy_temp_path {self.dir}/proxy;
  fastcgi_temp_path {self.dir}/fastcgi;
  uwsgi_temp_path {self.dir}/uwsgi;
  scgi_temp_path {self.dir}/scgi;
  server {{
    listen 127.0.0.1:{self.port};
    root {docroot};
  }}
}}
""")
        self.proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(self.dir)],
                                     stderr=subprocess.DEVNULL)
        wait_for_port(self.port, proc=self.proc, what="nginx")

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def rss_kib(self) -> int:
        # master + workers (the workers' command line is "nginx: worker process")
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)],
                             capture_output=True, text=True).stdout.split()
        return peak_rss_kib(self.proc.pid) + sum(peak_rss_kib(int(p)) for p in out if p.isdigit())

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class AnonPeak:
    """Samples RssAnon of a process every 20 ms: the process's own memory, without the file pages
    of LMDB's read-only map (which VmHWM counts, though the kernel can drop them at any time)."""

    def __init__(self, pid: int):
        import threading
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                with open(f"/proc/{self.pid}/status") as f:
                    for line in f:
                        if line.startswith("RssAnon:"):
                            self.peak = max(self.peak, int(line.split()[1]))
            except OSError:
                return
            time.sleep(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return self.peak


def blob_url(base: str, repo: str, digest: str) -> str:
    return f"{base}/v2/{repo}/blobs/{digest}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=str(ROOT / "build"))
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--wrk-seconds", type=int, default=10)
    ap.add_argument("--sections", default="1,2,3",
                    help="which of sections 1 (hit), 2 (wrk), 3 (cold) to run, e.g. 3")
    ap.add_argument("--cold-clients", default="1,8", help="client counts for section 3")
    args = ap.parse_args()
    sections = {int(x) for x in args.sections.split(",")}
    binary = pathlib.Path(args.build) / "src" / "drayage"
    work = pathlib.Path(tempfile.mkdtemp(prefix="drayage-bench-"))
    servers = []
    try:
        print(f"building images under {work} ...", flush=True)
        upstream = Registry(work / "upstream").start()
        servers.append(upstream)
        image = upstream.push_image("bench/app", "v1", [args.big_mib * MiB, MiB, 16 * 1024],
                                    seed=42)
        big, mid, small = image.layers
        docroot = work / "docroot"
        docroot.mkdir()
        for name, blob in (("big", big), ("mid", mid), ("small", small)):
            os.link(blob.path, docroot / name)

        ng_on = Nginx(work / "nginx-on", docroot, True)
        ng_off = Nginx(work / "nginx-off", docroot, False)
        servers += [ng_on, ng_off]
        hot = Drayage(binary, work / "drayage-hot",
                      {"upstream": {"url": upstream.url},
                       "cache": {"max_size": f"{args.big_mib * 2 + 512}MiB"},
                       "log": {"level": "warn"}}).start()
        servers.append(hot)
        hot_anon = AnonPeak(hot.proc.pid)
        # Warm drayage's cache.
        for blob in (big, mid, small):
            curl_speed(blob_url(hot.url, "bench/app", blob.digest))
        time.sleep(1)

        targets = {
            "nginx sendfile on": lambda n: ng_on.url(n),
            "nginx sendfile off": lambda n: ng_off.url(n),
            "docker-registry fs": lambda n: blob_url(upstream.url, "bench/app",
                                                     {"big": big, "mid": mid, "small": small}[n].digest),
            "drayage hit": lambda n: blob_url(hot.url, "bench/app",
                                              {"big": big, "mid": mid, "small": small}[n].digest),
        }
        # docker-registry answers blob GETs with a redirect only with S3; filesystem serves bytes.
        speeds = {k: [] for k in targets}
        for _ in range(args.rounds if 1 in sections else 0):
            for name, url_of in targets.items():
                speeds[name].append(curl_speed(url_of("big")))
        if 1 in sections:
            print(f"\n1. cache-hit GET of a {args.big_mib} MiB blob, one curl client (median of "
                  f"{args.rounds}):")
        for name, v in speeds.items() if 1 in sections else ():
            base = statistics.median(speeds["drayage hit"])
            med = statistics.median(v)
            print(f"   {name:22s} {med / 1e9:6.2f} GB/s   drayage/this = {base / med:5.2f}")

        if 2 in sections:
            print(f"\n2. wrk, 64 connections, {args.wrk_seconds} s each:")
        for blob_name, label in (("mid", "1 MiB"), ("small", "16 KiB")) if 2 in sections else ():
            rps = {name: wrk_rps(url_of(blob_name), args.wrk_seconds)
                   for name, url_of in targets.items()}
            base = rps["drayage hit"]
            for name, v in rps.items():
                print(f"   {label:6s} {name:22s} {v:10.0f} req/s   drayage/this = {base / v:5.2f}")

        if 3 in sections:
            print(f"\n3. cold pull of the {args.big_mib} MiB blob from the upstream registry:")
        cold_clients = [int(x) for x in args.cold_clients.split(",")] if 3 in sections else []
        for clients in cold_clients:
            rows = {"drayage": [], "docker-registry proxy": []}
            gets = {"drayage": [], "docker-registry proxy": []}
            rss = {"drayage": 0, "docker-registry proxy": 0}
            anon = {"drayage": 0, "docker-registry proxy": 0}
            for r in range(args.rounds):
                for kind in rows:
                    d = work / f"cold-{kind.split()[0]}-{clients}-{r}"
                    if kind == "drayage":
                        srv = Drayage(binary, d, {"upstream": {"url": upstream.url},
                                                  "cache": {"max_size": f"{args.big_mib * 2}MiB"},
                                                  "log": {"level": "warn"}}).start()
                        url = blob_url(srv.url, "bench/app", big.digest)
                    else:
                        srv = Registry(d, proxy_remoteurl=upstream.url).start()
                        url = blob_url(srv.url, "bench/app", big.digest)
                    mark = len(upstream.blob_gets(big.digest))
                    sampler = AnonPeak(srv.proc.pid)
                    start = time.monotonic()
                    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
                        list(pool.map(lambda _: curl_speed(url), range(clients)))
                    elapsed = time.monotonic() - start
                    rows[kind].append(clients * big.size / elapsed)
                    time.sleep(1.0)
                    gets[kind].append(len(upstream.blob_gets(big.digest)) - mark)
                    rss[kind] = max(rss[kind], peak_rss_kib(srv.proc.pid))
                    anon[kind] = max(anon[kind], sampler.stop())
                    srv.stop()
                    shutil.rmtree(d, ignore_errors=True)
            base = statistics.median(rows["drayage"])
            for kind in rows:
                med = statistics.median(rows[kind])
                print(f"   {clients} client(s) {kind:22s} {med / 1e9:6.2f} GB/s aggregate   "
                      f"upstream GETs {gets[kind]}   peak RSS {rss[kind] / 1024:6.1f} MiB "
                      f"(anon {anon[kind] / 1024:5.1f})   "
                      f"drayage/this = {base / med:5.2f}")

        print("\n4. peak RSS of the long-running servers:")
        print(f"   drayage (hot)          {peak_rss_kib(hot.proc.pid) / 1024:6.1f} MiB "
              f"(anon {hot_anon.stop() / 1024:5.1f} MiB; the rest is file-backed: code, LMDB tree pages)")
        print(f"   docker-registry fs     {peak_rss_kib(upstream.proc.pid) / 1024:6.1f} MiB")
        print(f"   nginx sendfile on      {ng_on.rss_kib() / 1024:6.1f} MiB (master + workers)")
        print(f"   nginx sendfile off     {ng_off.rss_kib() / 1024:6.1f} MiB (master + workers)")
    finally:
        for s in servers:
            try:
                s.stop()
            except Exception:  # noqa: BLE001
                pass
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
