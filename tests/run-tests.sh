#!/usr/bin/env bash
# run-tests.sh - README command #2, the one test command.
#
# Installs missing Debian packages (root only), builds build/ with warnings as
# errors, runs the unit tests (ctest) and the compat suite (real Celery 5.2 clients
# against the real worker; twice: as the worker comes, whose pool processes fetch
# for themselves, and with --no-pool-fetch, where the main process hands them work). With
# --sanitize or CELERIAC_SANITIZE=1 it then builds build-asan/ with ASan+UBSan and
# runs them all again against that binary.
# Exit status is non-zero if any step fails; every step still runs.
#
# Environment: JOBS (default 2), PYTEST_ARGS (extra pytest arguments, e.g. "-x -k cli"),
# CELERIAC_BUILD_DIR / CELERIAC_ASAN_BUILD_DIR (default build/ and build-asan/).
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo" || exit 1
jobs=${JOBS:-2}
sanitize=${CELERIAC_SANITIZE:-0}
for arg in "$@"; do
    case "$arg" in
        --sanitize) sanitize=1 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "run-tests.sh: unknown argument '$arg' (try --help)" >&2; exit 64 ;;
    esac
done

# shellcheck source=compat/deps.sh
. "$repo/compat/deps.sh"
celeriac_install_deps || exit 1

failures=()
step() { # step NAME COMMAND...: runs, records failure, never stops the script
    local name=$1; shift
    echo "==> $name"
    local t0=$SECONDS
    if "$@"; then
        echo "==> $name: ok ($((SECONDS - t0))s)"
    else
        echo "==> $name: FAILED ($((SECONDS - t0))s)"
        failures+=("$name")
        return 1
    fi
}

pytest_timeout=()
if /usr/bin/python3 -c 'import pytest_timeout' 2>/dev/null; then
    pytest_timeout=(--timeout=300)
fi

# suite NAME BUILD_DIR [cmake options...]: build, ctest, compat against that build.
suite() {
    local name=$1 dir=$2; shift 2
    step "$name: configure" cmake -S "$repo" -B "$dir" -DCELERIAC_WERROR=ON "$@" || return
    step "$name: build" cmake --build "$dir" -j"$jobs" || return
    step "$name: unit tests" ctest --test-dir "$dir" --output-on-failure -j"$jobs"
    # shellcheck disable=SC2086
    step "$name: compat (real Celery)" env \
        CELERIAC_BIN="$dir/celeriac" CELERIAC_EXAMPLES="$dir/examples.so" \
        /usr/bin/python3 -m pytest compat -q "${pytest_timeout[@]}" ${PYTEST_ARGS:-}
    # The same suite with the main process fetching and handing work over.
    # shellcheck disable=SC2086
    step "$name: compat with --no-pool-fetch" env \
        CELERIAC_BIN="$dir/celeriac" CELERIAC_EXAMPLES="$dir/examples.so" \
        COMPAT_CELERIAC_ARGS="--no-pool-fetch" \
        /usr/bin/python3 -m pytest compat -q "${pytest_timeout[@]}" ${PYTEST_ARGS:-}
}

step "style: banned functions" bash "$repo/.ci/banned-functions"

suite plain "${CELERIAC_BUILD_DIR:-$repo/build}"

# The integration run under valgrind: the end-to-end demo (real producer, worker,
# Redis) with the worker and its pool processes under memcheck; any error or
# definite leak makes the worker exit 99 and the demo fail.
valgrind_demo() {
    local dir=${CELERIAC_BUILD_DIR:-$repo/build}
    local wrapper="$dir/celeriac-valgrind"
    printf '#!/bin/sh\nexec valgrind --quiet --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite --log-file=%s/valgrind.%%p.log %s/celeriac "$@"\n' \
        "$dir" "$dir" > "$wrapper"
    chmod +x "$wrapper"
    rm -f "$dir"/valgrind.*.log
    local rc=0
    /usr/bin/python3 "$repo/compat/demo.py" --bin "$wrapper" --timeout 300 || rc=1
    if grep -lE "ERROR SUMMARY: [1-9]|definitely lost: [1-9]" "$dir"/valgrind.*.log 2>/dev/null; then
        cat "$dir"/valgrind.*.log
        rc=1
    fi
    return $rc
}
if command -v valgrind >/dev/null; then
    step "valgrind: end-to-end demo" valgrind_demo
fi

# The benchmark keeps working: its smoke run (tiny sizes, every worker, every
# result checked; no timing is asserted).
step "bench: smoke run" /usr/bin/python3 "$repo/compat/bench/bench.py" --smoke \
    --celeriac "${CELERIAC_BUILD_DIR:-$repo/build}/celeriac" \
    --json "${CELERIAC_BUILD_DIR:-$repo/build}/bench-smoke.json"

# The decoders' fuzz target keeps building and survives a short run, seeded
# with the captured messages (a crash, a sanitizer report or a leak fails it).
fuzz_smoke() {
    local dir=${CELERIAC_FUZZ_BUILD_DIR:-$repo/build-fuzz} corpus rc=0
    CC=clang cmake -S "$repo" -B "$dir" -DCELERIAC_WERROR=ON -DCELERIAC_FUZZ=ON \
        -DCELERIAC_ASAN=ON -DCELERIAC_UBSAN=ON >/dev/null || return 1
    cmake --build "$dir" -j"$jobs" --target fuzz_task_message || return 1
    corpus=$(mktemp -d) || return 1
    find "$repo/protocol/fixtures" -maxdepth 1 -type f -exec cp {} "$corpus"/ \;
    "$dir/fuzz_task_message" -max_total_time=60 -print_final_stats=1 "$corpus" || rc=1
    rm -rf "$corpus"
    return $rc
}

if [ "$sanitize" = 1 ]; then
    # detect_leaks: the main process is leak-checked at exit. Pool children leave
    # with _exit(), which skips the leak check, so fork+exit children are fine.
    # Clang's and GCC's ASan both honour these.
    # (strict_string_checks makes every strchr() scan the whole string: quadratic on
    # large documents, so it is left off.)
    export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:halt_on_error=1"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
    suite asan "${CELERIAC_ASAN_BUILD_DIR:-$repo/build-asan}" -DCELERIAC_ASAN=ON -DCELERIAC_UBSAN=ON \
        -DCMAKE_BUILD_TYPE=Debug
    if command -v clang >/dev/null; then
        step "fuzz: the decoders for 60 s (libFuzzer, ASan+UBSan)" fuzz_smoke
    fi
fi

if [ ${#failures[@]} -ne 0 ]; then
    echo "run-tests.sh: FAILED: ${failures[*]}" >&2
    exit 1
fi
echo "run-tests.sh: all passed"
