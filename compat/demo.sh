#!/usr/bin/env bash
# demo.sh - README command #1: install what is missing, build, run the end-to-end demo.
# A real Celery producer sends a document through a private redis-server to the
# celeriac worker and prints its progress and result. Extra arguments go to demo.py
# (e.g. a document path).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=compat/deps.sh
. "$repo/compat/deps.sh"
celeriac_install_deps

build="${CELERIAC_BUILD_DIR:-$repo/build}"
cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$(nproc 2>/dev/null || echo 2)" --target celeriac >/dev/null

exec /usr/bin/python3 "$repo/compat/demo.py" --bin "$build/celeriac" "$@"
