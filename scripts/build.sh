#!/usr/bin/env bash
# Configures (once) and builds drayage in build/ (or $DRAYAGE_BUILD_DIR). Extra args go to meson setup.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${DRAYAGE_BUILD_DIR:-build}
if [ ! -f "$dir/build.ninja" ]; then
  meson setup "$dir" "$@"
elif [ $# -gt 0 ]; then
  meson configure "$dir" "$@"
fi
ninja -C "$dir"
