#!/usr/bin/env bash
# Install promtool (only the binary, from Debian's prometheus package) into
# the directory given (default: the virtualenv's bin next to this repository),
# so `promtool test rules` runs without a Prometheus service. Needs apt.
set -euo pipefail
target="${1:-$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin}"
if command -v promtool >/dev/null || [ -x "$target/promtool" ]; then
  exit 0
fi
apt-get update -qq
tools="$(mktemp -d)"
trap 'rm -rf "$tools"' EXIT
(cd "$tools" && apt-get download -qq prometheus)
dpkg-deb --fsys-tarfile "$tools"/prometheus_*.deb | tar -xO ./usr/bin/promtool > "$target/promtool"
chmod +x "$target/promtool"
