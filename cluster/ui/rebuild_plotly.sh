#!/bin/sh
# Re-vendor the run browser's plotting bundle: plotly.js's official partial bundle "basic" (scatter, bar, pie: the
# only trace types the pages draw), 1.2 MB instead of the full 4.8 MB plotly.min.js, from the npm registry.
# Run from anywhere; needs npm. The result is committed (the farm runs offline; no CDN).
# A new version changes the <style> text plotly inserts: update LIBRARY_STYLE_HASHES in cluster/ui/app.py
# (Chromium names the hash in its console; tests/test_ui.py fails on any CSP report).
set -eu
VERSION=4.1.1
SHA256=99784e3abfb07b142a15e521a439e6d9addceadb3f79553fd24c72774f0649ba  # plotly-basic.min.js of $VERSION
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && npm pack --silent "plotly.js-basic-dist-min@$VERSION" >/dev/null && tar xzf ./*.tgz)
echo "$SHA256  $WORK/package/plotly-basic.min.js" | sha256sum -c -
cp "$WORK/package/plotly-basic.min.js" "$HERE/static/vendor/plotly-basic.min.js"
cp "$WORK/package/LICENSE" "$HERE/static/vendor/LICENSE-plotly.txt"
echo "vendored plotly.js-basic $VERSION into $HERE/static/vendor/"
