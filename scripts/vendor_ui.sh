#!/usr/bin/env bash
# Refresh the web UI's third-party files in src/lokal/ui/static/vendor/ from the npm registry.
#
# Versions are pinned in ui-vendor/package.json and ui-vendor/package-lock.json (integrity hashes),
# so `npm ci` fetches exactly the same tarballs every time. The copied files are committed:
# users of lokal never need Node.js; only whoever bumps a version runs this script.
set -euo pipefail
cd "$(dirname "$0")/.."

VENDOR=src/lokal/ui/static/vendor
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

cp ui-vendor/package.json ui-vendor/package-lock.json "$WORK/"
(cd "$WORK" && npm ci --ignore-scripts --no-audit --no-fund)
M="$WORK/node_modules"

rm -rf "$VENDOR" && mkdir -p "$VENDOR/licenses"
cp "$M/marked/lib/marked.umd.js" "$VENDOR/marked.umd.js"
cp "$M/marked/LICENSE" "$VENDOR/licenses/marked.LICENSE"
cp "$M/dompurify/dist/purify.min.js" "$VENDOR/purify.min.js"
cp "$M/dompurify/LICENSE" "$VENDOR/licenses/dompurify.LICENSE"
cp "$M/@highlightjs/cdn-assets/highlight.min.js" "$VENDOR/highlight.min.js"
cp "$M/@highlightjs/cdn-assets/styles/github.min.css" "$VENDOR/highlight-github.min.css"
cp "$M/@highlightjs/cdn-assets/styles/github-dark.min.css" "$VENDOR/highlight-github-dark.min.css"
cp "$M/@highlightjs/cdn-assets/LICENSE" "$VENDOR/licenses/highlight.js.LICENSE"
cp "$M/uplot/dist/uPlot.iife.min.js" "$VENDOR/uPlot.min.js"
cp "$M/uplot/dist/uPlot.min.css" "$VENDOR/uPlot.min.css"
cp "$M/uplot/LICENSE" "$VENDOR/licenses/uPlot.LICENSE"
(cd "$WORK" && node -e '
  const lock = require("./package-lock.json");
  for (const [k, v] of Object.entries(lock.packages)) if (k) console.log(k.replace("node_modules/", "") + " " + v.version);
') > "$VENDOR/VERSIONS.txt"
echo "vendored into $VENDOR:"; ls -la "$VENDOR"
