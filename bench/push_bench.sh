#!/bin/sh
# Push benchmark: drayage vs docker-registry into the same Swift bucket, direct and with each S3
# connection limited (fault proxy). By hand: bench/push_bench.sh [build-dir]. See push_bench.py.
set -e
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-${DRAYAGE_BUILD_DIR:-$here/../build}}
[ -x "$build/src/drayage" ] || { echo "no $build/src/drayage; build first (ninja -C $build)" >&2; exit 2; }
exec /usr/bin/python3 "$here/push_bench.py" "$build"
