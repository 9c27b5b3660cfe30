# deps.sh - the Debian packages celeriac needs to build, test and demo; sourced by
# compat/demo.sh, tests/run-tests.sh and .ci/run. It installs nothing by itself:
# call celeriac_install_deps.

CELERIAC_DEB_PACKAGES="libhiredis-dev libyajl-dev libmsgpack-dev librabbitmq-dev
libcurl4-openssl-dev libssl-dev zlib1g-dev libbz2-dev pkg-config cmake make gcc clang
redis-server python3-celery python3-kombu python3-redis python3-pytest
python3-pytest-timeout python3-fastapi python3-flask python3-httpx python3-msgpack
python3-uvicorn python3-yaml valgrind"

# Prints the packages from CELERIAC_DEB_PACKAGES that dpkg does not report installed.
celeriac_missing_deps() {
    local p missing=""
    for p in $CELERIAC_DEB_PACKAGES; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
            missing="$missing $p"
        fi
    done
    echo "$missing"
}

# Installs whatever is missing. Needs root (or passwordless sudo); does nothing when
# everything is present, so it is cheap to call on every run. Set
# CELERIAC_FORCE_APT_UPDATE=1 to always run apt-get update first (CI does).
celeriac_install_deps() {
    local missing sudo=""
    if ! command -v dpkg-query >/dev/null 2>&1; then
        echo "deps: not a Debian system; install the equivalent of: $CELERIAC_DEB_PACKAGES" >&2
        return 0
    fi
    missing=$(celeriac_missing_deps)
    if [ -z "${missing// /}" ] && [ "${CELERIAC_FORCE_APT_UPDATE:-0}" != 1 ]; then
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo="sudo -n"
        elif [ -n "${missing// /}" ]; then
            echo "deps: missing packages:$missing" >&2
            echo "deps: run as root: apt-get install -y$missing" >&2
            return 1
        else
            return 0
        fi
    fi
    export DEBIAN_FRONTEND=noninteractive
    echo "deps: apt-get update" >&2
    $sudo apt-get update -q >&2
    missing=$(celeriac_missing_deps)
    if [ -n "${missing// /}" ]; then
        echo "deps: installing$missing" >&2
        # shellcheck disable=SC2086
        $sudo apt-get install -y -q --no-install-recommends $missing >&2
    fi
}
