#!/usr/bin/env bash
# Installs the npm packages the browser tests run (tools/browser: axe-core, oidc-provider) from their
# package-lock.json, exactly those versions; does nothing when they are installed already.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=tools/browser
stamp=$dir/node_modules/.installed
if [ -f "$stamp" ] && [ "$stamp" -nt "$dir/package-lock.json" ]; then
    exit 0
fi
if ! command -v npm >/dev/null; then
    echo "npm is needed for the browser tests (Node.js 20 or newer): apt-get install nodejs npm" >&2
    exit 1
fi
npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error
touch "$stamp"
