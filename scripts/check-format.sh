#!/usr/bin/env bash
# Fails when a C++ file differs from what clang-format (root .clang-format) would write.
#   scripts/check-format.sh        # check
#   scripts/check-format.sh --fix  # rewrite in place
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files '*.cpp' '*.hpp' '*.h' '*.cc')
[ ${#files[@]} -gt 0 ] || exit 0
if [ "${1:-}" = "--fix" ]; then
  clang-format -i "${files[@]}"
else
  clang-format --dry-run --Werror "${files[@]}"
fi
