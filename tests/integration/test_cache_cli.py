"""`drayage cache stats|ls|verify|evict` against a real LMDB cache.

The cache is populated by tests/unit/cache/cache_populate (the cache module's own code, no
server needed), which prints each blob's digest, size and first 32 bytes; the corruption test
flips a byte of a stored chunk in data.mdb found by those bytes.
"""
import os
import pty
import signal
import subprocess
import time

import pytest
import requests
import yaml

MAX_SIZE = 64 * 1024 * 1024


@pytest.fixture
def populate_bin(build_dir):
    p = build_dir / "tests" / "unit" / "cache" / "cache_populate"
    if not p.exists():
        pytest.fail(f"{p} missing; build it: ninja -C {build_dir} tests/unit/cache/cache_populate")
    return p


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"


@pytest.fixture
def config_file(tmp_path, cache_dir):
    f = tmp_path / "drayage.yml"
    f.write_text(yaml.safe_dump({
        "http": {"addr": "127.0.0.1:5999"},  # not listened on by cache commands
        "cache": {"path": str(cache_dir), "max_size": "64MiB"},
        "upstream": {"url": ""},
    }))
    return f


def cli(drayage_bin, config_file, *args, stderr_tty=False):
    cmd = [str(drayage_bin), "cache", *args, "--config", str(config_file)]
    if not stderr_tty:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        return p.returncode, p.stdout, p.stderr
    master, slave = pty.openpty()
    try:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, text=True)
        os.close(slave)
        err = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO once the child closed its end
                break
            if not chunk:
                break
            err += chunk
        out = p.stdout.read()
        p.wait(timeout=120)
        return p.returncode, out, err.decode(errors="replace")
    finally:
        os.close(master)


def populate(populate_bin, cache_dir, *sizes):
    p = subprocess.run([str(populate_bin), str(cache_dir), str(MAX_SIZE), *map(str, sizes)],
                       capture_output=True, text=True, timeout=120, check=True)
    blobs = []
    for line in p.stdout.splitlines():
        if line == "ready":
            break
        digest, size, *head = line.split()
        head = head[0] if head else ""
        blobs.append({"digest": digest, "size": int(size), "head": bytes.fromhex(head)})
    assert len(blobs) == len(sizes)
    return blobs


def listed(out):
    return {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.strip()}


def test_no_cache_is_a_clear_failure(drayage_bin, config_file, cache_dir):
    rc, out, err = cli(drayage_bin, config_file, "stats")
    assert rc == 1
    assert f"no cache at {cache_dir}" in err
    assert not cache_dir.exists()  # looking does not create one


def test_usage_errors(drayage_bin, config_file):
    assert cli(drayage_bin, config_file, "bogus")[0] == 2
    assert cli(drayage_bin, config_file, "evict")[0] == 2


def test_stats_ls_verify_evict(drayage_bin, config_file, populate_bin, cache_dir):
    blobs = populate(populate_bin, cache_dir, 1000, 300_000, 2 * 1024 * 1024, 0)

    rc, out, err = cli(drayage_bin, config_file, "stats")
    assert rc == 0, err
    fields = dict(line.split(":", 1) for line in out.splitlines())
    assert int(fields["blobs"].split()[0]) == 4
    assert int(fields["blob_bytes"].split()[0]) == sum(b["size"] for b in blobs)
    assert int(fields["charged_bytes"].split()[0]) <= MAX_SIZE
    assert int(fields["filling"].split()[0]) == 0

    rc, out, err = cli(drayage_bin, config_file, "ls")
    assert rc == 0, err
    rows = listed(out)
    assert set(rows) == {b["digest"] for b in blobs}
    for b in blobs:
        assert int(rows[b["digest"]][1]) == b["size"]

    rc, out, err = cli(drayage_bin, config_file, "verify")
    assert rc == 0, err
    assert "4 ok, 0 corrupt" in out
    assert "[" not in err  # no progress bar when stderr is not a terminal

    victim = blobs[1]
    rc, out, err = cli(drayage_bin, config_file, "evict", victim["digest"])
    assert rc == 0, err
    assert victim["digest"] not in listed(cli(drayage_bin, config_file, "ls")[1])
    rc, out, err = cli(drayage_bin, config_file, "evict", victim["digest"])
    assert rc == 1
    assert "not in the cache" in err
    rc, out, err = cli(drayage_bin, config_file, "evict", "sha256:nothex")
    assert rc == 1
    assert "not a sha256 digest" in err

    rc, out, err = cli(drayage_bin, config_file, "evict", "--all", stderr_tty=True)
    assert rc == 0, err
    assert "evicted 3 blobs" in out
    assert "100%" in err  # progress bar on a terminal
    rc, out, err = cli(drayage_bin, config_file, "stats")
    fields = dict(line.split(":", 1) for line in out.splitlines())
    assert int(fields["blobs"].split()[0]) == 0
    assert int(fields["charged_bytes"].split()[0]) == 0


def test_verify_drops_corrupt_blobs(drayage_bin, config_file, populate_bin, cache_dir):
    blobs = populate(populate_bin, cache_dir, 500_000, 700_000)
    victim = blobs[1]
    data = cache_dir / "data.mdb"
    raw = bytearray(data.read_bytes())
    at = raw.find(victim["head"])
    assert at >= 0
    raw[at + 5] ^= 0xFF
    data.write_bytes(bytes(raw))

    rc, out, err = cli(drayage_bin, config_file, "verify", stderr_tty=True)
    assert rc == 1
    assert "1 corrupt" in out
    assert f"corrupt: {victim['digest']}" in err
    assert "verify [" in err and "100%" in err
    rows = listed(cli(drayage_bin, config_file, "ls")[1])
    assert set(rows) == {blobs[0]["digest"]}
    rc, out, err = cli(drayage_bin, config_file, "verify")
    assert rc == 0, err


def test_safe_while_a_server_holds_the_cache(drayage_bin, config_file, populate_bin, cache_dir):
    populate(populate_bin, cache_dir, 100_000, 200_000)
    # A process with the Cache open (writer thread, lock file), like a running server.
    holder = subprocess.Popen([str(populate_bin), str(cache_dir), str(MAX_SIZE), "--hold", "300000"],
                              stdout=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in holder.stdout:
            lines.append(line.strip())
            if line.strip() == "ready":
                break
        assert lines[-1] == "ready"
        for cmd in (["stats"], ["ls"], ["verify"]):
            rc, out, err = cli(drayage_bin, config_file, *cmd)
            assert rc == 0, (cmd, err)
        assert len(listed(cli(drayage_bin, config_file, "ls")[1])) == 3
        rc, out, err = cli(drayage_bin, config_file, "evict", "--all")
        assert rc == 0, err
        assert holder.poll() is None
        # The holder commits without fsync (MDB_NOSYNC): its marker names this boot.
        state = (cache_dir / "drayage.state").read_text().split()
        assert state[0] == "dirty" and state[1] == boot_id()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # Killed, but the system stayed up: the page cache has every commit, the cache is trusted.
    rc, out, err = cli(drayage_bin, config_file, "verify")
    assert rc == 0, err
    assert "verified 0 blobs" in out


def boot_id():
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def test_a_cache_open_when_the_system_went_down_is_discarded(drayage_bin, config_file,
                                                             populate_bin, cache_dir,
                                                             drayage_factory):
    blobs = populate(populate_bin, cache_dir, 100_000, 300_000)
    # A clean close syncs the file and says so.
    assert (cache_dir / "drayage.state").read_text() == "clean\n"
    assert len(listed(cli(drayage_bin, config_file, "ls")[1])) == 2

    # As if the machine lost power under a running server: its unsynced commits may be torn.
    (cache_dir / "drayage.state").write_text("dirty 00000000-1111-2222-3333-444444444444\n")
    rc, out, err = cli(drayage_bin, config_file, "ls")
    assert rc != 0
    assert "system went down" in err and "discards and refills" in err, err

    server = drayage_factory({"cache": {"path": str(cache_dir), "max_size": "64MiB"},
                              "upstream": {"url": ""}})
    assert requests.get(f"{server.url}/v2/", timeout=10).status_code == 200
    for b in blobs:
        r = requests.head(f"{server.url}/v2/any/repo/blobs/{b['digest']}", timeout=10)
        assert r.status_code == 404
    assert "the cache is discarded" in server.log()
    state = (cache_dir / "drayage.state").read_text().split()
    assert state == ["dirty", boot_id()]
    server.stop()
    assert (cache_dir / "drayage.state").read_text() == "clean\n"
    rc, out, err = cli(drayage_bin, config_file, "ls")
    assert rc == 0, err
    assert listed(out) == {}
