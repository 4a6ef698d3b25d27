#!/usr/bin/env bash
# sluice's one test command: every test of the workspace (unit, property, and end-to-end tests with
# real peers on 127.0.0.1: Python's smtplib and aiosmtpd, swaks, Postfix's smtp-sink).
#
#   scripts/test.sh                  install missing test peers (as root), then cargo test
#   scripts/test.sh --install-only   only install the test peers
#   scripts/test.sh ARGS...          extra arguments go to cargo test (e.g. --test limits, -- --nocapture)
#
# Test peers: Debian packages postfix (for smtp-sink; installed unconfigured, never started), swaks,
# libnet-ssleay-perl (swaks' TLS), strace, fiu-utils (libfiu's fiu-run and fiu-ctrl: I/O fault
# injection), nmap (its smtp-open-relay script), curl (the admin interface and /metrics), chromium and
# chromium-driver (the status page in a headless browser); the PyPI packages aiosmtpd, prometheus-client
# (its parser reads /metrics) and selenium (drives chromium) for the Python the tests run
# ($SLUICE_TEST_PYTHON, default python3). Installing needs root; as another user, missing peers are
# listed with the commands that install them.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${SLUICE_TEST_PYTHON:-python3}"
APT_PACKAGES=(libssl-dev pkg-config openssl postfix swaks libnet-ssleay-perl strace fiu-utils nmap curl chromium
    chromium-driver)
PIP_REQUIREMENTS=('aiosmtpd>=1.4,<2' 'prometheus-client>=0.20' 'selenium>=4.11')

missing_apt() {
    local missing=()
    dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
    command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    [ -x /usr/sbin/smtp-sink ] || command -v smtp-sink >/dev/null 2>&1 || missing+=(postfix)
    command -v swaks >/dev/null 2>&1 || missing+=(swaks)
    perl -MNet::SSLeay -e 1 >/dev/null 2>&1 || missing+=(libnet-ssleay-perl)
    command -v strace >/dev/null 2>&1 || missing+=(strace)
    command -v fiu-run >/dev/null 2>&1 && command -v fiu-ctrl >/dev/null 2>&1 || missing+=(fiu-utils)
    command -v nmap >/dev/null 2>&1 || missing+=(nmap)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    [ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
    echo "${missing[@]}"
}

missing_pip() {
    local missing=()
    "$PYTHON" -c 'import aiosmtpd' >/dev/null 2>&1 || missing+=(aiosmtpd)
    "$PYTHON" -c 'import prometheus_client' >/dev/null 2>&1 || missing+=(prometheus-client)
    "$PYTHON" -c 'import selenium' >/dev/null 2>&1 || missing+=(selenium)
    echo "${missing[@]}"
}

install_apt() {
    export DEBIAN_FRONTEND=noninteractive
    # Postfix unconfigured: no main.cf, so nothing to start and nothing bound to port 25.
    echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections
    # And no package script may start a service while we install (removed again below).
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# installed by scripts/test.sh during its apt-get install\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        created_policy=1
        trap "rm -f '$policy'" EXIT
    fi
    local ok=0
    for attempt in 1 2 3; do
        if apt-get -o DPkg::Lock::Timeout=300 update &&
            apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends "${APT_PACKAGES[@]}"; then
            ok=1
            break
        fi
        echo "scripts/test.sh: apt-get failed (attempt $attempt of 3)" >&2
        sleep $((attempt * 10))
    done
    [ "$created_policy" = 1 ] && rm -f "$policy"
    [ "$ok" = 1 ] || { echo "scripts/test.sh: could not install ${APT_PACKAGES[*]}" >&2; exit 1; }
    # Belt and braces: should a Postfix master be running anyway, stop it.
    if command -v postfix >/dev/null 2>&1 && postfix status >/dev/null 2>&1; then
        postfix stop || true
    fi
}

install_pip() {
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_INPUT=1
    "$PYTHON" -m pip install --quiet "${PIP_REQUIREMENTS[@]}" ||
        "$PYTHON" -m pip install --quiet --break-system-packages "${PIP_REQUIREMENTS[@]}"
}

ensure_peers() {
    local apt pip
    apt="$(missing_apt)"
    pip="$(missing_pip)"
    [ -z "$apt" ] && [ -z "$pip" ] && return 0
    if [ "$(id -u)" != 0 ]; then
        {
            echo "scripts/test.sh: test peers missing:${apt:+ Debian packages: $apt;}${pip:+ Python packages for $PYTHON: $pip}"
            echo "install them as root with: scripts/test.sh --install-only"
            [ -n "$apt" ] && echo "  or: apt-get install --no-install-recommends ${APT_PACKAGES[*]}"
            [ -n "$pip" ] && echo "  or: $PYTHON -m pip install ${PIP_REQUIREMENTS[*]@Q}"
        } >&2
        exit 1
    fi
    if [ -n "$apt" ]; then
        echo "scripts/test.sh: installing Debian packages (missing: $apt)" >&2
        install_apt
    fi
    if [ -n "$pip" ]; then
        echo "scripts/test.sh: installing ${PIP_REQUIREMENTS[*]} for $PYTHON" >&2
        install_pip
    fi
    apt="$(missing_apt)"
    pip="$(missing_pip)"
    if [ -n "$apt$pip" ]; then
        echo "scripts/test.sh: still missing after the install: $apt $pip" >&2
        exit 1
    fi
}

if [ "${1:-}" = "--install-only" ]; then
    ensure_peers
    exit 0
fi

ensure_peers
cargo test --workspace --locked --no-fail-fast "$@"
if [ "$#" -eq 0 ]; then
    # The TLS 1.0/1.1 listener is behind a cargo feature (it links OpenSSL); test it with the feature on.
    cargo test -p sluice --locked --features legacy-tls --test legacy_tls
fi
