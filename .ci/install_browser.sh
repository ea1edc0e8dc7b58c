#!/usr/bin/env bash
# Install a headless Chromium for the report's real-browser test (test/test_fleet_report.py), called
# by `make test`. Debian's chromium-headless-shell is enough (--dump-dom, --screenshot and console
# logging all work in it) and is about a third of the full `chromium` package. Never fails the
# build: without a browser the test skips with a reason, so every way out here is exit 0.
set -euo pipefail

PACKAGE=chromium-headless-shell
NAMES=(chromium chromium-headless-shell chromium-browser google-chrome)
PATHS=(/usr/lib/chromium/chromium-headless-shell /usr/lib/chromium-headless-shell/chromium-headless-shell
       /usr/lib/chromium/chromium)

have_browser() {
    local name path
    for name in "${NAMES[@]}"; do command -v "$name" > /dev/null 2>&1 && return 0; done
    for path in "${PATHS[@]}"; do [ -x "$path" ] && return 0; done
    return 1
}

if have_browser; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get > /dev/null 2>&1; then
    echo "install_browser: no Chromium and cannot install it (not root / no apt-get): the browser test will skip"
    exit 0
fi

start=$(date +%s)
log=$(mktemp)
# The package lists are refreshed only when they do not know the package (a fresh image).
if ! apt-cache policy "$PACKAGE" 2> /dev/null | grep -q 'Candidate: [0-9]'; then
    apt-get update -qq > "$log" 2>&1 || true
fi
if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$PACKAGE" >> "$log" 2>&1 \
        && have_browser; then
    echo "install_browser: installed $PACKAGE in $(( $(date +%s) - start )) s"
else
    echo "install_browser: installing $PACKAGE failed, the browser test will skip: $(tail -n 1 "$log")"
fi
rm -f "$log"
exit 0
