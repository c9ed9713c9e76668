#!/usr/bin/env bash
# CI check: the committed viewer (meshnode/web/static/viewer/) is exactly what scripts/build_viewer.sh builds
# from viewer/ and its lock file. Rebuilds into a temporary folder and fails on any difference.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$root/scripts/build_viewer.sh" "$tmp/viewer"
if ! diff -r "$root/meshnode/web/static/viewer" "$tmp/viewer" >"$tmp/diff.txt"; then
    echo "meshnode/web/static/viewer/ differs from a fresh build: run scripts/build_viewer.sh and commit the result" >&2
    head -20 "$tmp/diff.txt" >&2
    exit 1
fi
echo "viewer build: the committed files match a fresh build ($(find "$tmp/viewer" -type f | wc -l) files)"
