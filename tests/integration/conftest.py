"""Shared pytest setup for drayage's integration tests.

Every test talks to real programs on 127.0.0.1 on ports it picks; fixtures start and stop them.
The build directory comes from DRAYAGE_BUILD_DIR (default: build/ at the project root).
"""
import os
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from harness.drayage import Drayage  # noqa: E402


@pytest.fixture(scope="session")
def build_dir() -> pathlib.Path:
    d = pathlib.Path(os.environ.get("DRAYAGE_BUILD_DIR", ROOT / "build")).resolve()
    if not (d / "src" / "drayage").exists():
        pytest.fail(f"no drayage binary under {d}; build first (ninja -C {d})")
    return d


@pytest.fixture
def drayage_bin(build_dir) -> pathlib.Path:
    return build_dir / "src" / "drayage"


@pytest.fixture
def drayage_factory(drayage_bin, tmp_path):
    """Starts drayage processes with a config dict; stops them all at teardown."""
    started = []

    def start(config: dict, env: dict | None = None, name: str = "drayage",
              nofile: tuple[int, int] | None = None) -> Drayage:
        d = Drayage(drayage_bin, tmp_path / name, config, env=env, nofile=nofile)
        d.start()
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


@pytest.fixture
def throttle_factory(build_dir):
    """Starts throttling, delaying proxies (harness/throttle.py) in front of 127.0.0.1 origins:
    throttle_factory(origin_port, rate=50e6, delay_ms=10); stops them all at teardown."""
    from harness.throttle import Throttle

    started = []

    def start(origin_port: int, rate: float | None = None, delay_ms: float = 0.0) -> Throttle:
        t = Throttle(build_dir, "127.0.0.1", origin_port, rate=rate, delay_ms=delay_ms).start()
        started.append(t)
        return t

    yield start
    for t in started:
        t.stop()
