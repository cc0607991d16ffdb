#!/usr/bin/env bash
# Run the public HTTP cache test suite (github.com/http-tests/cache-tests) against edgeproxy.
#   bash benchmarks/conformance/run.sh                        # edge→shield chain and single edge
#   bash benchmarks/conformance/run.sh --targets chain,edge,nginx,origin
#   bash benchmarks/conformance/run.sh --targets chain --id freshness-max-age   # one test, verbose
# The suite comes from $CACHE_TESTS_DIR (a checkout) or is cloned from $CACHE_TESTS_REPO (default:
# GitHub) at the pinned commit into benchmarks/conformance/.suite (ignored by git).
# Needs node >= 20 and npm (for undici).
set -euo pipefail
cd "$(dirname "$0")/../.."

SUITE_REPO=${CACHE_TESTS_REPO:-https://github.com/http-tests/cache-tests.git}
SUITE_COMMIT=b55b8bda3dbb8c927c04e85bd8d496a8caa3e4ba  # the commit results.md was made with

if [ -z "${CACHE_TESTS_DIR:-}" ]; then
    CACHE_TESTS_DIR=benchmarks/conformance/.suite
    if [ ! -f "$CACHE_TESTS_DIR/tests/index.mjs" ]; then
        git clone --quiet "$SUITE_REPO" "$CACHE_TESTS_DIR"
        git -C "$CACHE_TESTS_DIR" checkout --quiet "$SUITE_COMMIT"
    fi
fi
command -v node >/dev/null || { echo "node is required (apt-get install nodejs npm)" >&2; exit 1; }
export PATH="$PATH:/usr/sbin:/sbin"  # nginx, for --targets nginx

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    .venv/bin/pip install -q -e .
fi
exec .venv/bin/python -m benchmarks.conformance --suite "$CACHE_TESTS_DIR" "$@"
