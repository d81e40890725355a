#!/usr/bin/env bash
# Unpack Debian's mricron-data (BSD-3-clause; Colin27, a real T1 scan from the Montreal Neurological
# Institute) into data/mricron, without installing it system-wide. Used by the real-scan benchmark
# (scripts/real_scan.py) and its tests. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
dst=data/mricron
[ -f "$dst/usr/share/mricron/templates/ch2.nii.gz" ] && exit 0
[ -f /usr/share/mricron/templates/ch2.nii.gz ] && exit 0
mkdir -p "$dst"
tmp=$(mktemp -d)
(cd "$tmp" && apt-get download mricron-data >/dev/null 2>&1) || { echo "get_real_scan: apt-get download mricron-data failed" >&2; exit 1; }
dpkg -x "$tmp"/mricron-data_*.deb "$dst"
rm -rf "$tmp"
echo "[real scan] $dst/usr/share/mricron/templates/ch2.nii.gz"
