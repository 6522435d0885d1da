"""`drayage --check-config --config FILE`: the operator's way to see the effective configuration.

Contract (src/main.cpp): on success the effective config, secrets redacted, is printed to stdout
and the exit status is 0; on a bad file or environment one line `drayage: <message>` goes to
stderr (the message names the key path and FILE:LINE or the DRAYAGE_* variable) and the exit
status is 2. Nothing listens, so these tests need no ports.
"""
import os
import pathlib
import subprocess

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]


def check_config(drayage_bin, config_path, env=None):
    # Start from the caller's environment without its DRAYAGE_* variables, so a developer's
    # shell settings cannot change the outcome; add the test's own.
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("DRAYAGE_")}
    run_env.update(env or {})
    return subprocess.run(
        [str(drayage_bin), "--check-config", "--config", str(config_path)],
        capture_output=True, text=True, env=run_env, timeout=60)


def write(tmp_path, text, name="drayage.yml"):
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD = """\
log:
  level: debug
http:
  addr: 127.0.0.1:15000
cache:
  path: /tmp/drayage-cache
  max_size: 2GiB
upstream:
  url: http://127.0.0.1:15001
  username: mirror
  password: hunter2-upstream
storage:
  s3:
    accesskey: test:tester
    secretkey: testing-secret
    region: us-east-1
    regionendpoint: http://127.0.0.1:18080
    bucket: registry
    secure: false
    chunksize: 5242880
    rootdirectory: /reg
"""


def test_good_file_prints_effective_config_with_secrets_redacted(drayage_bin, tmp_path):
    path = write(tmp_path, GOOD)
    r = check_config(drayage_bin, path)
    assert r.returncode == 0, r.stderr
    assert "hunter2-upstream" not in r.stdout + r.stderr
    assert "testing-secret" not in r.stdout + r.stderr
    cfg = yaml.safe_load(r.stdout)
    assert cfg["upstream"]["password"] == "<redacted>"
    assert cfg["storage"]["s3"]["secretkey"] == "<redacted>"
    assert cfg["storage"]["s3"]["sessiontoken"] == ""  # not set: shown empty, not redacted
    assert cfg["storage"]["s3"]["accesskey"] == "test:tester"
    assert cfg["storage"]["s3"]["bucket"] == "registry"
    assert cfg["storage"]["s3"]["chunksize"] == "5MiB"
    assert cfg["cache"]["max_size"] == "2GiB"
    assert cfg["log"]["level"] == "debug"
    # Defaults are filled in for keys the file does not set.
    assert cfg["http"]["limits"]["max_headers"] == 100
    assert cfg["storage"]["s3"]["multipart"]["concurrency"] == 4
    # The printed config is itself a valid config that gives the same result.
    again = write(tmp_path, r.stdout, "again.yml")
    r2 = check_config(drayage_bin, again)
    assert r2.returncode == 0, r2.stderr
    assert yaml.safe_load(r2.stdout) == cfg


def test_shipped_default_config_checks(drayage_bin):
    r = check_config(drayage_bin, ROOT / "conf" / "drayage.yml")
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)
    assert cfg["upstream"]["url"] == "https://registry-1.docker.io"
    assert cfg["cache"]["path"] == "/var/lib/drayage/cache"
    assert cfg["cache"]["max_size"] == "10GiB"
    assert cfg["http"]["addr"] == ":5000"
    assert not cfg["storage"].get("s3")


def test_bad_file_exits_2_with_one_line_naming_key_and_line(drayage_bin, tmp_path):
    path = write(tmp_path, GOOD.replace("chunksize: 5242880", "chunksize: 1048576"))
    r = check_config(drayage_bin, path)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0] == (
        f"drayage: {path}:20: storage.s3.chunksize: 1048576 is below the S3 minimum part size; "
        "expected at least 5242880 (5MiB)")


def test_unknown_key_and_syntax_error_name_the_line(drayage_bin, tmp_path):
    path = write(tmp_path, "cache:\n  path: /tmp/x\n  maxsize: 1GiB\n")
    r = check_config(drayage_bin, path)
    assert r.returncode == 2
    assert r.stderr.strip() == (
        f"drayage: {path}:3: cache.maxsize: unknown key; did you mean cache.max_size?")

    path = write(tmp_path, "log:\n  level: info\n  format: [text\n", "syntax.yml")
    r = check_config(drayage_bin, path)
    assert r.returncode == 2
    assert r.stderr.startswith(f"drayage: {path}:")
    assert "YAML syntax error" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_missing_file_exits_2(drayage_bin, tmp_path):
    r = check_config(drayage_bin, tmp_path / "absent.yml")
    assert r.returncode == 2
    assert str(tmp_path / "absent.yml") in r.stderr


def test_environment_overrides_the_file(drayage_bin, tmp_path):
    path = write(tmp_path, GOOD)
    r = check_config(drayage_bin, path, {
        "DRAYAGE_CACHE_MAX_SIZE": "50GiB",
        "DRAYAGE_HTTP_LIMITS_MAX_HEADERS": "200",
        "DRAYAGE_STORAGE_S3_SECRETKEY": "env-secret",
        "DRAYAGE_STORAGE_S3_SECURE": "true",
    })
    assert r.returncode == 0, r.stderr
    assert "env-secret" not in r.stdout
    cfg = yaml.safe_load(r.stdout)
    assert cfg["cache"]["max_size"] == "50GiB"
    assert cfg["http"]["limits"]["max_headers"] == 200
    assert cfg["storage"]["s3"]["secure"] is True
    assert cfg["storage"]["s3"]["secretkey"] == "<redacted>"


def test_environment_alone_creates_storage_s3(drayage_bin, tmp_path):
    path = write(tmp_path, "upstream:\n  url: ''\n")
    r = check_config(drayage_bin, path, {
        "DRAYAGE_STORAGE_S3_BUCKET": "from-env",
        "DRAYAGE_STORAGE_S3_REGIONENDPOINT": "http://127.0.0.1:18080",
    })
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)
    assert cfg["storage"]["s3"]["bucket"] == "from-env"
    assert cfg["upstream"]["url"] == ""


def test_bad_or_unknown_environment_variable_exits_2_naming_it(drayage_bin, tmp_path):
    path = write(tmp_path, GOOD)
    r = check_config(drayage_bin, path, {"DRAYAGE_CACHE_MAX_SIZE": "lots"})
    assert r.returncode == 2
    assert r.stderr.strip() == (
        'drayage: DRAYAGE_CACHE_MAX_SIZE: cache.max_size: expected a size like 512MiB, '
        'got "lots"')

    r = check_config(drayage_bin, path, {"DRAYAGE_CACHE_MAXSIZE": "1GiB"})
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "drayage: DRAYAGE_CACHE_MAXSIZE: no configuration key has this name; "
        "did you mean DRAYAGE_CACHE_MAX_SIZE?")

    # The test scripts' own variables are not configuration.
    r = check_config(drayage_bin, path, {"DRAYAGE_BUILD_DIR": "/nowhere"})
    assert r.returncode == 0, r.stderr
