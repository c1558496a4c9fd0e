#!/usr/bin/env bash
# For portshift-server: Debian's bubblewrap (the sandbox launcher, the service's default) and, for
# the browser test, Debian's Chromium (apt) and playwright-core (npm) to drive it.
# playwright-core downloads no browser; the test launches /usr/bin/chromium.
# Idempotent. Installs playwright-core into <repo>/.tools/server-browser (gitignored).
set -euo pipefail
VERSION="1.64.1"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
DEST="${PORTSHIFT_TOOLS_DIR:-$REPO/.tools}/server-browser"
if ! command -v bwrap >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bubblewrap >&2
    else
        echo "server/setup.sh: install Debian's bubblewrap (sudo apt-get install bubblewrap)" >&2
        exit 1
    fi
fi
if ! [ -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >&2
    else
        echo "server/setup.sh: install Debian's chromium (sudo apt-get install chromium)" >&2
        exit 1
    fi
fi
PKG="$DEST/node_modules/playwright-core/package.json"
if [ -f "$PKG" ] && grep -q "\"version\": \"$VERSION\"" "$PKG"; then
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "server/setup.sh: npm is not installed (apt-get install nodejs npm)" >&2
    exit 1
fi
mkdir -p "$DEST"
cd "$DEST"
[ -f package.json ] || echo '{"name": "portshift-test-tools-server-browser", "private": true}' > package.json
npm install --no-audit --no-fund --loglevel=error --save-exact "playwright-core@$VERSION" >&2
test -f "$PKG"
