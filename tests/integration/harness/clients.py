"""The real registry clients, pointed at drayage as a mirror: skopeo, containerd (ctr) and dockerd.

    skopeo_pull(mirror_host, "team/app:v1", dest_dir)         # registries.conf mirror of docker.io
    with Containerd(tmp) as c: c.pull(mirror_url, "docker.io/team/app:v1")   # ctr --hosts-dir
    with Dockerd(tmp, containerd, mirror_url) as d: d.pull("team/app:v1")     # registry-mirrors

Each daemon runs as root with all its state under the given directory, on sockets there, and is
stopped at exit. The machine has no route to docker.io, so a pull that succeeds went through the
mirror.
"""
import json
import os
import pathlib
import shutil
import subprocess
import time

from .net import terminate
from .registry import skopeo_env


def _write_registries_conf(path: pathlib.Path, mirror_host: str, server_host: str = "docker.io"):
    path.write_text(
        "unqualified-search-registries = []\n"
        "[[registry]]\n"
        f'prefix = "{server_host}"\n'
        f'location = "{server_host}"\n'
        "[[registry.mirror]]\n"
        f'location = "{mirror_host}"\n'
        "insecure = true\n")


def skopeo_pull(workdir, mirror_host: str, ref: str, dest: pathlib.Path,
                auth_file: pathlib.Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """skopeo copy docker://docker.io/<ref> dir:<dest> through a registries.conf mirror. The dir:
    transport keeps blobs as they came (oci: would compress uncompressed layers)."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "registries.conf"
    _write_registries_conf(conf, mirror_host)
    policy = workdir / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    cmd = ["skopeo", "--registries-conf", str(conf), "--policy", str(policy), "copy", "--quiet",
           "--preserve-digests"]
    if auth_file:
        cmd += ["--src-authfile", str(auth_file)]
    else:
        cmd += ["--src-no-creds"]
    cmd += [f"docker://docker.io/{ref}", f"dir:{dest}"]
    env = skopeo_env()
    env["HOME"] = str(workdir)  # no stray auth.json from the machine
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def dir_blobs(dest: pathlib.Path) -> dict[str, pathlib.Path]:
    """Blobs of a skopeo dir: copy (files named by their hex digest), by digest. The manifest is
    `manifest.json`."""
    return {"sha256:" + p.name: p for p in pathlib.Path(dest).iterdir()
            if len(p.name) == 64 and all(c in "0123456789abcdef" for c in p.name)}


class Containerd:
    """containerd 1.6 as root with root/state/socket under `workdir`, CRI disabled."""

    def __init__(self, workdir):
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket = self.workdir / "containerd.sock"
        self.config = self.workdir / "config.toml"
        self.log_path = self.workdir / "containerd.log"
        self.proc = None

    def start(self) -> "Containerd":
        self.config.write_text(
            "version = 2\n"
            f'root = "{self.workdir / "root"}"\n'
            f'state = "{self.workdir / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            "[grpc]\n"
            f'  address = "{self.socket}"\n'
            "[ttrpc]\n"
            f'  address = "{self.socket}.ttrpc"\n'
            "[debug]\n"
            f'  address = "{self.socket}.debug"\n')
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(["containerd", "--config", str(self.config)],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("containerd exited:\n" + self.log())
            r = subprocess.run(["ctr", "--address", str(self.socket), "version"],
                               capture_output=True, text=True)
            if r.returncode == 0:
                return self
            time.sleep(0.2)
        raise RuntimeError("containerd did not come up:\n" + self.log())

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except FileNotFoundError:
            return ""

    def hosts_dir(self, mirror_url: str, server_host: str = "docker.io",
                  as_server: bool = False) -> pathlib.Path:
        """A --hosts-dir with <server_host>/hosts.toml naming drayage as a mirror (or, with
        `as_server`, as the server itself, so no fallback can hide a failure)."""
        d = self.workdir / f"hosts-{int(time.monotonic_ns())}"
        (d / server_host).mkdir(parents=True)
        if as_server:
            # containerd 1.6 wants a [host] table even when the host is the server itself.
            text = (f'server = "{mirror_url}"\n'
                    f'[host."{mirror_url}"]\n'
                    '  capabilities = ["pull", "resolve"]\n')
        else:
            text = (f'server = "https://registry-1.docker.io"\n'
                    f'[host."{mirror_url}"]\n'
                    '  capabilities = ["pull", "resolve"]\n')
        (d / server_host / "hosts.toml").write_text(text)
        return d

    def ctr(self, *args, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(["ctr", "--address", str(self.socket), *args],
                              capture_output=True, text=True, timeout=timeout)

    def pull(self, mirror_url: str, ref: str, as_server: bool = False,
             user: str | None = None) -> subprocess.CompletedProcess:
        hosts = self.hosts_dir(mirror_url, ref.split("/", 1)[0], as_server)
        args = ["image", "pull", "--hosts-dir", str(hosts)]
        if user:
            args += ["--user", user]
        return self.ctr(*args, ref)

    def image_digest(self, ref: str) -> str:
        r = self.ctr("image", "ls")
        for line in r.stdout.splitlines()[1:]:
            parts = line.split()
            if parts and parts[0] == ref:
                return parts[2]
        return ""

    def stop(self) -> None:
        if self.proc:
            terminate(self.proc, timeout=20)
        if self.proc:
            self._log.close()
        self.proc = None
        # containerd leaves mounts behind only for running containers; there are none.

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class Dockerd:
    """dockerd 20.10 as root with data/exec root and socket under `workdir`, using the given
    containerd, no iptables, no bridge, vfs storage, drayage as its registry mirror."""

    def __init__(self, workdir, containerd: Containerd, mirror_url: str):
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket = self.workdir / "docker.sock"
        self.containerd = containerd
        self.mirror_url = mirror_url
        self.log_path = self.workdir / "dockerd.log"
        self.proc = None

    def start(self) -> "Dockerd":
        host = self.mirror_url.split("://", 1)[1]
        config = {
            "registry-mirrors": [self.mirror_url],
            "insecure-registries": [host],
            "iptables": False,
            "ip-masq": False,
            "bridge": "none",
            "storage-driver": "vfs",
            "data-root": str(self.workdir / "data"),
            "exec-root": str(self.workdir / "exec"),
            "pidfile": str(self.workdir / "docker.pid"),
            "hosts": [f"unix://{self.socket}"],
            "containerd": str(self.containerd.socket),
        }
        cfg = self.workdir / "daemon.json"
        cfg.write_text(json.dumps(config))
        env = dict(os.environ)
        env["HOME"] = str(self.workdir)
        env.pop("DOCKER_HOST", None)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(["dockerd", "--config-file", str(cfg)], stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("dockerd exited:\n" + self.log())
            r = self.docker("version", timeout=10)
            if r.returncode == 0:
                return self
            time.sleep(0.3)
        raise RuntimeError("dockerd did not come up:\n" + self.log())

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except FileNotFoundError:
            return ""

    def docker(self, *args, timeout: float = 600) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env["HOME"] = str(self.workdir)
        env.pop("DOCKER_HOST", None)
        return subprocess.run(["/usr/bin/docker", "-H", f"unix://{self.socket}", *args],
                              capture_output=True, text=True, timeout=timeout, env=env)

    def pull(self, ref: str) -> subprocess.CompletedProcess:
        return self.docker("pull", ref)

    def repo_digest(self, ref: str) -> str:
        r = self.docker("image", "inspect", "--format", "{{json .RepoDigests}}", ref)
        if r.returncode != 0:
            return ""
        digests = json.loads(r.stdout.strip() or "[]")
        return digests[0].split("@", 1)[1] if digests else ""

    def stop(self) -> None:
        if self.proc:
            terminate(self.proc, timeout=30)
        if self.proc:
            self._log.close()
        self.proc = None
        # vfs leaves plain directories; the temp dir removes them.
        shutil.rmtree(self.workdir / "exec", ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
