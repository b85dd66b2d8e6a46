#!/usr/bin/env bash
# Set up minivisor on a Debian 12 host (as root), then run the demo or the tests.
#   ./setup.sh demo    the main job: boot the lecture's specfile and look inside the guest
#   ./setup.sh test    the test suite
set -euo pipefail
cd "$(dirname "$0")"

job=${1:-demo}
packages=(qemu-system-x86 qemu-utils ovmf syslinux syslinux-common mtools dosfstools python3-venv python3-pip iproute2)
# Virtual networks: dnsmasq (DHCP per network) and nft (minivisor's one table).
packages+=(dnsmasq-base nftables)
# The appliance's build compiles its kernel: Debian 12's kernel compiler and C library headers, and what
# the kernel's build runs (flex and bison for its configuration, bc, lz4; libelf for objtool).
packages+=(gcc-12 libc6-dev make flex bison bc lz4 libelf-dev)
# The web page's libraries (xterm.js, noVNC, uPlot) come from npm through package-lock.json: Debian's node
# and npm, unless a node with its own npm is there already (nodesource's nodejs ships npm and conflicts with it).
command -v npm >/dev/null || packages+=(nodejs npm)
# The tests also reassemble the KVM probe (binutils), click through the web page (chromium), make an
# installer CD (xorriso, isolinux) and run a cluster's etcd members (etcd-server; etcdctl in etcd-client).
[ "$job" = test ] && packages+=(binutils chromium xorriso isolinux etcd-server etcd-client)

install_host_packages() {
    local missing=()
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    # The appliance is built from .debs fetched with apt-get download: the lists must be fresh.
    if [ ${#missing[@]} -gt 0 ] || [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v lock)" ]; then
        echo "setup: installing ${missing[*]:-nothing, refreshing package lists}" >&2
        apt-get update -qq
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

install_python_env() {
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
    fi
    # pip's chatter goes to a log; on failure the log's end says why.
    if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,cluster]' >.venv/pip.log 2>&1; then
        tail -20 .venv/pip.log >&2
        echo "setup: installing minivisor's Python dependencies failed (log: .venv/pip.log)" >&2
        exit 1
    fi
    # The bytecode of minivisor's own modules (pip compiles the dependencies'): a fresh machine's first
    # commands answer as fast as later ones, also where PYTHONDONTWRITEBYTECODE is set.
    .venv/bin/python -m compileall -q src >/dev/null
}

install_web_libraries() {
    # Exactly what package-lock.json names, into node_modules (git-ignored); `minivisor serve` serves them.
    if ! npm ci --no-audit --no-fund --loglevel=error >.venv/npm.log 2>&1; then
        tail -20 .venv/npm.log >&2
        echo "setup: installing the web page's libraries failed (log: .venv/npm.log)" >&2
        exit 1
    fi
}

install_host_packages
install_python_env
install_web_libraries

case "$job" in
    demo)
        exec .venv/bin/minivisor demo
        ;;
    test)
        shift || true
        # The test guest, built once into ~/.cache/minivisor before the tests start: on a fresh machine its kernel
        # compiles for minutes, longer than any one test may take (pytest-timeout) while its fixture waits.
        .venv/bin/minivisor image build appliance >/dev/null
        set +e
        # Three test files at a time, each in one worker (a module's shared fixtures stay in one process): most
        # tests wait on guests, timers and leases, so three side by side keep 2 cores busy (~150 %: one at a time
        # took 21 minutes, two 10.5, three 9.3 on a quiet machine; four 9.0, for more load on every guest).
        # `./setup.sh test -n 0` runs them one after another.
        .venv/bin/python -m pytest -n 3 --dist loadfile "$@"
        status=$?
        # pytest's 5 means "no tests collected" (e.g. a -k that matches nothing): not a failure.
        if [ $status -eq 5 ]; then echo "setup: pytest collected no tests" >&2; status=0; fi
        exit $status
        ;;
    *)
        echo "usage: $0 demo|test [pytest args]" >&2
        exit 2
        ;;
esac
