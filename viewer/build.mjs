// esbuild build of the viewer (run by scripts/build_viewer.sh): the page's bundle and the decoder worker,
// deterministic (no source maps, no absolute paths). Node.js built-ins that some dependencies name (the
// emscripten codecs' Node.js branch, vtk.js's XML writer) are replaced by small browser stand-ins: that code
// never runs in the viewer, but its module must load.
import { build } from "esbuild";
import path from "node:path";

const [out, loader] = process.argv.slice(2);
const STANDINS = {
  events: "class EventEmitter { on() { return this; } once() { return this; } off() { return this; }"
    + " emit() { return false; } removeAllListeners() { return this; } }\n"
    + "module.exports = EventEmitter; module.exports.EventEmitter = EventEmitter;",
  url: "module.exports = { URL: globalThis.URL, URLSearchParams: globalThis.URLSearchParams };",
};
const builtins = {
  name: "node-builtins",
  setup(b) {
    b.onResolve({ filter: /^(node:)?(fs|path|crypto|url|module|worker_threads|ws|events|util|stream)$/ },
      (args) => ({ path: args.path.replace(/^node:/, ""), namespace: "standin" }));
    b.onLoad({ filter: /.*/, namespace: "standin" },
      (args) => ({ contents: STANDINS[args.path] || "module.exports = {};", loader: "js" }));
  },
};
const common = {
  bundle: true, format: "esm", platform: "browser", target: "es2022", minify: true, legalComments: "none",
  charset: "utf8", logLevel: "warning", sourcemap: false, plugins: [builtins],
};
await build({ ...common, entryPoints: ["src/main.js"], outfile: path.join(out, "viewer.js") });
// the decoder worker: the image loader starts it as new Worker(new URL('./decodeImageFrameWorker.js',
// import.meta.url)), so it is built under that name beside the bundle
await build({ ...common, entryPoints: [path.join(loader, "decodeImageFrameWorker.js")],
              outfile: path.join(out, "decodeImageFrameWorker.js") });
