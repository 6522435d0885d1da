#!/usr/bin/env bash
# Installs the Debian 12 packages drayage needs, only those that are missing.
#   scripts/install-deps.sh build   # compiler, Meson, libraries
#   scripts/install-deps.sh test    # build + the real peers the tests start (Swift, registry, clients)
#   scripts/install-deps.sh bench   # test + nginx, wrk
# Runs apt-get as root (or through sudo when not root).
set -euo pipefail

what=${1:-build}

build_pkgs=(
  g++ meson ninja-build pkg-config
  libevent-dev libcurl4-openssl-dev libssl-dev liblmdb-dev libyaml-cpp-dev libhttp-parser-dev
  nlohmann-json3-dev libspdlog-dev libfmt-dev libpugixml-dev libcrypt-dev catch2
  ca-certificates
)
test_pkgs=(
  clang libclang-rt-14-dev clang-format lmdb-utils curl openssl procps
  python3 python3-pytest python3-requests python3-yaml python3-botocore python3-jwt
  python3-cryptography
  swift-proxy swift-object swift-container swift-account memcached
  docker-registry skopeo containerd docker.io apache2-utils
)
bench_pkgs=(nginx wrk awscli)

pkgs=("${build_pkgs[@]}")
case "$what" in
  build) ;;
  test) pkgs+=("${test_pkgs[@]}") ;;
  bench) pkgs+=("${test_pkgs[@]}" "${bench_pkgs[@]}") ;;
  *) echo "usage: $0 build|test|bench" >&2; exit 2 ;;
esac

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Packages' maintainer scripts must not start daemons (docker, containerd, memcached, nginx):
# the tests start their own on free ports.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
