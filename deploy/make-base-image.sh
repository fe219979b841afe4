#!/usr/bin/env bash
# A Debian bookworm base image with Python 3.11, built from this machine's apt sources with mmdebstrap,
# for machines that cannot pull images from a registry:
#   deploy/make-base-image.sh [TAG]       (default emoserve-base:bookworm; a no-op when TAG exists)
# then build on it:  docker build --build-arg BASE_IMAGE=emoserve-base:bookworm -f deploy/Dockerfile .
# Needs root (or unshare), mmdebstrap and a running docker daemon. The image holds what the Dockerfile
# needs and nothing else: python3 + venv, useradd (passwd) and CA certificates for model downloads.
set -euo pipefail

tag="${1:-emoserve-base:bookworm}"
suite="bookworm"  # Python 3.11: the same minor the pinned torch wheels are built for (cp311)
sources="${EMOSERVE_APT_SOURCES:-/etc/apt/sources.list.d/debian.sources}"  # this machine's mirrors

if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "$tag already exists"
    exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Check-Valid-Until off: a snapshot mirror serves Release files whose validity has run out
mmdebstrap --variant=minbase --include=python3,python3-venv,passwd,ca-certificates \
    --aptopt='Acquire::Check-Valid-Until "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    "$suite" "$work/rootfs.tar" "$sources"
docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' "$work/rootfs.tar" "$tag"
echo "built $tag"
