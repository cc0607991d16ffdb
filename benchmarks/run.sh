#!/usr/bin/env bash
# edgeproxy vs nginx vs Varnish: install what is missing, then run the comparison.
#   bash benchmarks/run.sh            # full run (~17 min quiet), results in benchmarks/results/
#   bash benchmarks/run.sh --quick    # short run (~6 min)
# Other options are passed on to `python -m benchmarks.compare` (--only, --out, --keep-workdir).
set -euo pipefail
cd "$(dirname "$0")/.."

# 1. System tools (Debian/Ubuntu). apt-get only runs when a binary is missing.
missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v varnishd >/dev/null || [ -x /usr/sbin/varnishd ] || missing+=(varnish)
command -v wrk >/dev/null || missing+=(wrk)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} ..."
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    # (a fresh machine's package lists are empty: without an update nothing is found)
    "${sudo_cmd[@]}" apt-get update -qq
    "${sudo_cmd[@]}" apt-get install -y "${missing[@]}"
    # The packages start system services listening on all interfaces (nginx :80, Varnish
    # :6081); the benchmark runs its own instances on loopback, so stop the ones we installed.
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        for pkg in "${missing[@]}"; do
            case "$pkg" in
                nginx|varnish) "${sudo_cmd[@]}" systemctl disable --now "$pkg" || true ;;
            esac
        done
    fi
fi
export PATH="$PATH:/usr/sbin:/sbin"

# 2. Python: the project's venv with the `bench` extra (locust, matplotlib) and py-spy.
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if ! .venv/bin/python -c "import locust, matplotlib, psutil, edgeproxy" 2>/dev/null; then
    .venv/bin/pip install -e '.[bench]'
fi
if [ ! -x .venv/bin/py-spy ]; then
    .venv/bin/pip install py-spy || echo "py-spy unavailable: the profile sections are skipped"
fi

# 3. Run. The comparison starts everything on 127.0.0.1 and stops it again, even on errors.
exec .venv/bin/python -m benchmarks.compare "$@"
