#!/usr/bin/env bash
# Installs what is missing, builds, and runs drayage with conf/drayage.yml (or the file given).
#   scripts/run.sh [CONFIG]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh build
DRAYAGE_BUILD_DIR=build scripts/build.sh -Dbuildtype=release
config=${1:-conf/drayage.yml}
exec build/src/drayage --config "$config"
