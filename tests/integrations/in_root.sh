#!/usr/bin/env bash
# in_root.sh ROOT COMMAND...: COMMAND inside the Debian root ROOT, from this checkout, which is mounted at its
# own path there. The mounts (/proc, /dev, the checkout) live in a mount namespace of their own: nothing stays
# mounted when COMMAND ends. Root only (chroot). The network is the host's, so loopback servers are shared.
set -euo pipefail
root="$1"
shift
checkout="$PWD"
# The host's resolver and trusted CAs (a proxy's among them, where PyPI is reached through one).
cp /etc/resolv.conf "$root/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
mkdir -p "$root$checkout"
exec unshare --mount --fork -- bash -c '
    set -e
    mount -t proc proc "$1/proc"
    mount --bind /dev "$1/dev"
    mount --bind "$2" "$1$2"
    exec chroot "$1" bash -c "cd \"\$0\" && exec \"\$@\"" "$2" "${@:3}"' bash "$root" "$checkout" "$@"
