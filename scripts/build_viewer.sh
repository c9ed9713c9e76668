#!/usr/bin/env bash
# Builds the portal's DICOM viewer (viewer/: Cornerstone3D, versions pinned by viewer/package-lock.json) into
# meshnode/web/static/viewer/ (committed: `make demo` needs only python3). Runs `npm ci` and esbuild; the output
# is deterministic (no source maps, no absolute paths, no timestamps): build twice, identical bytes.
#   scripts/build_viewer.sh [OUT_DIR]     (default meshnode/web/static/viewer)
# The bundle fetches nothing from the network at run time: the decoder worker and the WebAssembly codecs are
# served next to it, from /ui/static/viewer/.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/meshnode/web/static/viewer}"
src="$root/viewer"
if ! command -v npm >/dev/null; then
    echo "npm is needed to build the viewer (Node.js 20 or newer): apt-get install nodejs npm" >&2
    exit 1
fi
stamp="$src/node_modules/.installed"
if [ ! -f "$stamp" ] || [ "$src/package-lock.json" -nt "$stamp" ]; then
    npm ci --prefix "$src" --no-audit --no-fund --loglevel=error
    touch "$stamp"
fi
mkdir -p "$out"
rm -rf "${out:?}"/*
loader="$src/node_modules/@cornerstonejs/dicom-image-loader/dist/esm"
cd "$src"
node build.mjs "$out" "$loader"
# the WebAssembly codecs, found by the worker under wasmBasePath /ui/static/viewer/codecs/
mkdir -p "$out/codecs"
for wasm in codec-charls/dist/charlswasm_decode.wasm codec-libjpeg-turbo-8bit/dist/libjpegturbowasm_decode.wasm \
            codec-openjpeg/dist/openjpegwasm_decode.wasm codec-openjph/dist/openjphjs.wasm \
            codec-libjxl/dist/jpegxlwasm_decode.wasm; do
    cp "$src/node_modules/@cornerstonejs/$wasm" "$out/codecs/"
done
# what went in, for anyone reading the folder (no dates: the bytes depend only on the lock file)
{
    echo "Built by scripts/build_viewer.sh from viewer/ (do not edit: rebuild)."
    node -e 'const l=require("./package-lock.json");for(const [k,v] of Object.entries(l.packages)){if(k.startsWith("node_modules/@cornerstonejs/")||k==="node_modules/esbuild")console.log(k.slice(13)+" "+v.version)}' | sort
} > "$out/VERSIONS.txt"
