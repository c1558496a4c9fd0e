#!/usr/bin/env bash
# Installs Azurite (the local Azure Storage emulator, from npm) for the tests of portshift-sink-azure.
# Idempotent: does nothing when the pinned version is already installed.
# Installs into <repo>/.tools/azurite (gitignored). Needs Node >= 18 and npm (Node 20: Azurite 3.35.0 is
# the last release that runs on it).
set -euo pipefail
VERSION="3.35.0"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
DEST="${PORTSHIFT_TOOLS_DIR:-$REPO/.tools}/azurite"
PKG="$DEST/node_modules/azurite/package.json"
if [ -f "$PKG" ] && grep -q "\"version\": \"$VERSION\"" "$PKG" && [ -e "$DEST/node_modules/.bin/azurite-blob" ]; then
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "sink_azure/setup.sh: npm is not installed (apt-get install nodejs npm)" >&2
    exit 1
fi
mkdir -p "$DEST"
cd "$DEST"
[ -f package.json ] || echo '{"name": "portshift-test-tools-azurite", "private": true}' > package.json
npm install --no-audit --no-fund --loglevel=error --save-exact "azurite@$VERSION" >&2
test -e "$DEST/node_modules/.bin/azurite-blob"
