#!/bin/sh
# Runs the blob cache benchmark (see bench/cache_bench.cpp). Usage: bench/cache_bench.sh [BUILD_DIR] [DIR] [MiB]
set -e
build=${1:-build}
ninja -C "$build" src/cache/cache_bench
exec "$build/src/cache/cache_bench" "${2:-/tmp}" "${3:-1024}"
