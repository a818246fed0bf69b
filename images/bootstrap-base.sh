#!/usr/bin/env bash
# Make a Debian bookworm root filesystem with Python, as a tar on stdout's path $1,
# for machines where no container registry is reachable (no `FROM python:...`).
# Usage: bootstrap-base.sh OUTPUT.tar   (needs root and debootstrap)
set -euo pipefail
out="$1"
mirror="${PYBOX_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
if ! command -v debootstrap >/dev/null 2>&1; then
    echo "debootstrap not found: install it (apt-get install debootstrap)" >&2
    exit 3
fi
root="$(mktemp -d "${TMPDIR:-/tmp}/pybox-rootfs.XXXXXX")"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$root" "$mirror"
# Package caches and lists are not needed at run time.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -cf "$out" .
