#!/usr/bin/env bash
# dist/cloud_probability.zip: the plugin folder as QGIS's "Install from ZIP" wants it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$root/dist"
cd "$root"
git archive --format=zip --prefix=cloud_probability/ -o dist/cloud_probability.zip HEAD
echo "$root/dist/cloud_probability.zip"
