"""TLS termination: curl with a test CA, a certificate swapped on SIGHUP during a download (the
download completes on the old certificate, new connections get the new one), a bad new file
keeps the old one, clients closing without close_notify. The upstream is docker-registry with
`auth: htpasswd`; drayage authenticates its own clients (alice) in front of it.
"""
import hashlib
import re
import signal
import socket
import ssl
import subprocess
import time

import pytest
import requests
from cryptography import x509

from harness.drayage import Drayage
from harness.registry import ALL_MANIFESTS, KiB, MiB, Registry
from harness.tls import TestCA
from test_auth_pull import htpasswd_file

BIG = 96 * MiB


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("tls-upstream"), htpasswd={"mirror": "mpw"}).start()
    reg.image = reg.push_image("team/app", "v1", [KiB, BIG], seed=21, creds="mirror:mpw")
    yield reg
    reg.stop()


@pytest.fixture
def tls_mirror(build_dir, tmp_path, upstream):
    ca = TestCA(tmp_path / "ca")
    cert_a, key_a, serial_a = ca.issue("a")
    live_cert, live_key = tmp_path / "live.crt", tmp_path / "live.key"
    live_cert.write_bytes(cert_a.read_bytes())
    live_key.write_bytes(key_a.read_bytes())
    cfg = {
        "http": {"tls": {"certificate": str(live_cert), "key": str(live_key)}},
        "upstream": {"url": upstream.url, "username": "mirror", "password": "mpw"},
        "auth": {"htpasswd": {"path": str(htpasswd_file(tmp_path / "htpasswd", {"alice": "pw"}))},
                 "rules": [{"repositories": ["team/**"], "pull": ["alice"]}]},
    }
    d = Drayage(build_dir / "src" / "drayage", tmp_path / "d", cfg).start()
    d.ca, d.serial_a, d.live = ca, serial_a, (live_cert, live_key)
    yield d
    d.stop()


def peer_serial(port: int, cafile) -> int:
    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            return x509.load_der_x509_certificate(s.getpeercert(binary_form=True)).serial_number


def open_download(port: int, cafile, path: str):
    """A TLS GET read by hand, so the test decides when to read the body. Returns the socket,
    the body length and the body bytes already read with the head."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               "Authorization: Basic YWxpY2U6cHc=\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, rest = buf.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200"), head
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    return s, length, rest


def test_curl_over_tls_with_the_test_ca(tls_mirror, upstream):
    d = tls_mirror
    layer = upstream.image.layers[0]
    url = f"https://127.0.0.1:{d.port}/v2/team/app/blobs/{layer.digest}"
    r = subprocess.run(["curl", "-sS", "--fail", "--cacert", str(d.ca.path), "-u", "alice:pw",
                        "-o", "-", url], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode() + d.log()[-2000:]
    assert hashlib.sha256(r.stdout).hexdigest() == layer.digest[7:]
    # Without the CA curl refuses; with TLS 1.2 as the most it may use, it still works.
    assert subprocess.run(["curl", "-sS", "-o", "/dev/null", url], capture_output=True,
                          timeout=60).returncode != 0
    r = subprocess.run(["curl", "-sS", "--fail", "--cacert", str(d.ca.path), "-u", "alice:pw",
                        "--tls-max", "1.2", "-o", "/dev/null", "-w", "%{http_code}", url],
                       capture_output=True, timeout=60)
    assert r.returncode == 0 and r.stdout == b"200"
    # Plain HTTP on the TLS port gets no answer in the clear.
    assert subprocess.run(["curl", "-sS", "-o", "/dev/null", "--max-time", "10",
                           f"http://127.0.0.1:{d.port}/healthz"], capture_output=True,
                          timeout=60).returncode != 0


def test_certificate_swapped_on_sighup_during_a_download(tls_mirror, upstream):
    d = tls_mirror
    big = upstream.image.layers[1]
    # Warm the cache so the download is a cache read paced by this client alone.
    r = requests.get(f"https://127.0.0.1:{d.port}/v2/team/app/blobs/{big.digest}",
                     auth=("alice", "pw"), verify=str(d.ca.path))
    assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == big.digest[7:]
    assert peer_serial(d.port, d.ca.path) == d.serial_a

    s, length, first = open_download(d.port, d.ca.path, f"/v2/team/app/blobs/{big.digest}")
    h = hashlib.sha256(first)
    got = len(first)
    while got < 4 * MiB:
        chunk = s.recv(1 << 20)
        assert chunk
        h.update(chunk)
        got += len(chunk)

    cert_b, key_b, serial_b = d.ca.issue("b")
    d.live[0].write_bytes(cert_b.read_bytes())
    d.live[1].write_bytes(key_b.read_bytes())
    d.signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while peer_serial(d.port, d.ca.path) != serial_b:
        assert time.monotonic() < deadline, "new connections never saw the new certificate"
        time.sleep(0.1)

    # A bad file: the reload fails and new connections keep certificate b.
    d.live[0].write_text("not a certificate\n")
    mark = d.log().count("TLS certificate not reloaded")
    d.signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while d.log().count("TLS certificate not reloaded") == mark:  # only to wait for the signal
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert peer_serial(d.port, d.ca.path) == serial_b

    # The download that started on certificate a completes, byte for byte.
    while got < length:
        chunk = s.recv(1 << 20)
        assert chunk, f"download cut at {got} of {length}"
        h.update(chunk)
        got += len(chunk)
    s.close()
    assert got == length == BIG
    assert "sha256:" + h.hexdigest() == big.digest


def test_clients_closing_without_close_notify(tls_mirror, upstream):
    d = tls_mirror
    big = upstream.image.layers[1]
    for i in range(10):
        s, _, _ = open_download(d.port, d.ca.path, f"/v2/team/app/blobs/{big.digest}")
        # SSLSocket.shutdown() drops the TLS layer and shuts the TCP socket: no close_notify.
        s.shutdown(socket.SHUT_RDWR)
        s.close()
    small = upstream.image.layers[0]
    for _ in range(3):
        r = requests.get(f"https://127.0.0.1:{d.port}/v2/team/app/blobs/{small.digest}",
                         auth=("alice", "pw"), verify=str(d.ca.path))
        assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == small.digest[7:]
    # Every abandoned connection was noticed and released.
    deadline = time.monotonic() + 20
    while True:
        m = requests.get(f"https://127.0.0.1:{d.port}/metrics", verify=str(d.ca.path)).text
        open_now = float(re.search(r"^drayage_http_open_connections (\S+)$", m, re.M).group(1))
        if open_now <= 1:
            break
        assert time.monotonic() < deadline, f"{open_now} connections still open"
        time.sleep(0.2)
