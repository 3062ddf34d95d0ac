#!/usr/bin/env bash
# dist/cloud_probability.zip: the plugin as QGIS's "Install from ZIP" and the QGIS plugin
# repository want it: one top folder cloud_probability/ holding what runs inside QGIS, and
# nothing for development (tests, benchmarks, scripts, CI, Makefile, requirements, docs).
#
# The files are the tracked ones, as they are in the work tree (uncommitted edits included,
# untracked files and caches never). tests/test_zip.py checks the zip like a release.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# What a user needs, and only that: a new top-level folder must be added here on purpose.
SHIPPED=(__init__.py plugin.py metadata.txt LICENSE resources.qrc icons core processing_provider ui)
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    echo "make_zip.sh: $root is not a git checkout; the zip is made from its tracked files" >&2
    exit 2
fi
# a commit of the work tree's tracked files (empty output when nothing is modified)
tree="$(git stash create)"
mkdir -p dist
rm -f dist/cloud_probability.zip
git archive --format=zip --prefix=cloud_probability/ -o dist/cloud_probability.zip "${tree:-HEAD}" -- "${SHIPPED[@]}"
echo "$root/dist/cloud_probability.zip"
