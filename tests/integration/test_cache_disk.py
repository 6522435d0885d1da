"""The cache on a filesystem that fills up: misses keep working (streamed uncached while writes
fail), the cache keeps within what the disk has room for when max_size is larger, and caching resumes once
space comes back. The filesystem is a small tmpfs mounted by the test: that needs root, so the
tests are skipped (the reason shown with -rs) only when not run as root. CI runs as root: there,
a mount that fails is a failure, never a skip."""
import hashlib
import os
import pathlib
import re
import subprocess
import time

import pytest
import requests

from harness.registry import MiB, Registry


@pytest.fixture
def small_fs(tmp_path):
    """A tmpfs of 256 MiB under tmp_path."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"root cannot mount a tmpfs on {mnt}: {r.stderr.strip()}"
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill_up(path: pathlib.Path) -> None:
    """Writes `path` until the filesystem is full."""
    block = b"\0" * MiB
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError:
            pass


def get_whole(url: str, tries: int = 3) -> bytes:
    """The body of the first complete 200 in `tries` attempts (a client retries a cut transfer)."""
    for _ in range(tries):
        try:
            r = requests.get(url, timeout=60)
        except requests.exceptions.RequestException:
            continue
        if r.status_code == 200 and len(r.content) == int(r.headers["Content-Length"]):
            return r.content
    raise AssertionError(f"no complete response for {url} in {tries} tries")


def outcomes(log: str, digest: str) -> list[str]:
    return re.findall(r'path="[^"]*' + re.escape(digest) + r'" status=\d+ .*?outcome=(\S+)', log)


def test_misses_are_streamed_uncached_while_the_disk_is_full_then_cached_again(
        tmp_path, small_fs, drayage_factory):
    reg = Registry(tmp_path / "up").start()
    try:
        image = reg.push_image("disk/app", "v1", [12 * MiB, 12 * MiB + 1], seed=31)
        a, b = image.layers
        d = drayage_factory({"upstream": {"url": reg.url},
                             "cache": {"path": str(small_fs / "cache"), "max_size": "1GiB"}})
        url = lambda layer: f"{d.url}/v2/disk/app/blobs/{layer.digest}"  # noqa: E731
        filler = small_fs / "filler"
        fill_up(filler)  # someone else's files take every byte left

        body = get_whole(url(a))
        assert hashlib.sha256(body).hexdigest() == a.digest.split(":")[1]
        log = d.sync_log()
        assert "writes are failing" in log
        assert "uncached:upstream" in outcomes(log, a.digest)
        assert "drayage_cache_writable 0" in requests.get(f"{d.url}/metrics", timeout=10).text

        # Space comes back: once the backoff (5 s) has passed, misses are cached again.
        filler.unlink()
        deadline = time.monotonic() + 40
        while True:
            body = get_whole(url(b))
            assert hashlib.sha256(body).hexdigest() == b.digest.split(":")[1]
            if outcomes(d.sync_log(), b.digest)[-1] == "hit":
                break
            assert time.monotonic() < deadline, outcomes(d.log(), b.digest)
            time.sleep(1)
        assert "writes succeed again" in d.log()
        assert "drayage_cache_writable 1" in requests.get(f"{d.url}/metrics", timeout=10).text
    finally:
        reg.stop()


def test_cache_that_fills_its_disk_shrinks_to_fit_and_keeps_serving(tmp_path, small_fs,
                                                                     drayage_factory):
    """cache.max_size larger than the filesystem: as the disk fills with the cache's own data, the
    cache keeps within what fits (older blobs are evicted) instead of new misses failing."""
    reg = Registry(tmp_path / "up").start()
    try:
        image = reg.push_image("disk/many", "v1", [40 * MiB + i for i in range(8)], seed=32)
        d = drayage_factory({"upstream": {"url": reg.url},
                             "cache": {"path": str(small_fs / "cache"), "max_size": "1GiB"}})
        for _ in range(2):
            for layer in image.layers:
                body = get_whole(f"{d.url}/v2/disk/many/blobs/{layer.digest}")
                assert hashlib.sha256(body).hexdigest() == layer.digest.split(":")[1]
        log = d.sync_log()
        assert "is larger than the whole filesystem" in log  # said at start
        # Kept within the filesystem before it filled: no write ever failed.
        assert "has room for about" in log
        assert "writes are failing" not in log and "cut:" not in log
        # The last blob filled is still cached: the cache works within what fits.
        last = image.layers[-1]
        get_whole(f"{d.url}/v2/disk/many/blobs/{last.digest}")
        assert outcomes(d.sync_log(), last.digest)[-1] == "hit"
        metrics = requests.get(f"{d.url}/metrics", timeout=10).text
        charged = float(re.search(r"^drayage_cache_charged_bytes (\S+)$", metrics, re.M).group(1))
        assert charged <= 256 * MiB
    finally:
        reg.stop()
