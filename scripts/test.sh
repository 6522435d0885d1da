#!/usr/bin/env bash
# Installs what is missing (test peers too), builds, and runs every test:
#   1. clang-format check
#   2. unit tests (Catch2) in a --werror build
#   3. the same unit tests under AddressSanitizer+UBSan; the cache and auth tests under
#      ThreadSanitizer
#   4. the request-parser fuzz target for a short time (libFuzzer, clang)
#   5. integration tests (pytest) against real Swift s3api, docker-registry, skopeo, containerd,
#      dockerd and curl, all on 127.0.0.1
# Set DRAYAGE_TEST_QUICK=1 to skip 3 and 4 while iterating.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
scripts/install-deps.sh test

step() { printf '\n==== %s ====\n' "$*"; }

step "format"
scripts/check-format.sh

step "build (werror)"
DRAYAGE_BUILD_DIR=build scripts/build.sh -Dwerror=true

step "unit tests"
meson test -C build --suite unit --print-errorlogs

if [ -z "${DRAYAGE_TEST_QUICK:-}" ]; then
  step "unit tests under address,undefined sanitizers"
  [ -f build-asan/build.ninja ] || meson setup build-asan -Db_sanitize=address,undefined \
      -Db_lundef=false -Dbuildtype=debug >/dev/null
  ninja -C build-asan
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    meson test -C build-asan --suite unit --print-errorlogs

  step "cache and auth tests under thread sanitizer"
  [ -f build-tsan/build.ninja ] || meson setup build-tsan -Db_sanitize=thread \
      -Dbuildtype=debug >/dev/null
  ninja -C build-tsan tests/unit/cache/test_cache tests/unit/cache/cache_crash_child \
      tests/unit/registry/auth/test_registry_auth
  TSAN_OPTIONS=halt_on_error=1 build-tsan/tests/unit/cache/test_cache
  TSAN_OPTIONS=halt_on_error=1 build-tsan/tests/unit/registry/auth/test_registry_auth

  step "fuzz the request parser (libFuzzer, 60 s)"
  [ -f build-fuzz/build.ninja ] || CXX=clang++ meson setup build-fuzz -Dfuzz=enabled \
      -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debug >/dev/null
  ninja -C build-fuzz tests/fuzz/fuzz_request_parser
  mkdir -p build-fuzz/corpus
  build-fuzz/tests/fuzz/fuzz_request_parser -max_total_time=60 -print_final_stats=1 \
    build-fuzz/corpus tests/fuzz/corpus
fi

step "integration tests"
DRAYAGE_BUILD_DIR=$root/build /usr/bin/python3 -m pytest -v -rs tests/integration
