#!/usr/bin/env bash
# Run the README's two commands (make demo, make test) on a fresh Debian root made with debootstrap,
# from a clean clone of this checkout (committed files only) and with an empty pip cache.
# Usage, as root:  scripts/fresh-debian.sh SUITE   (bookworm has Python 3.11, trixie 3.13)
set -euo pipefail
suite=${1:?usage: $0 SUITE (bookworm, trixie, ...)}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
repo=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "$0: needs root (debootstrap, mount, chroot)" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "$0: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }

root=$(mktemp -d "${TMPDIR:-/var/tmp}/fresh-debian-$suite.XXXXXX")
chmod 755 "$root"   # mktemp makes it 0700: apt's _apt user must get through /
cleanup() {
    for m in dev sys proc; do umount -R -l "$root/$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$root" || echo "$0: could not remove $root" >&2
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

debootstrap --variant=minbase "$suite" "$root" "$mirror" >/dev/null 2>&1 \
    || { tail -20 "$root/debootstrap/debootstrap.log" >&2; exit 1; }
mount --bind /proc "$root/proc"
for m in sys dev; do mount --rbind "/$m" "$root/$m" && mount --make-rslave "$root/$m"; done

# The network may re-sign TLS: the root trusts the host's local CA certificates.
if [ -d /usr/local/share/ca-certificates ]; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
fi
git clone -q "$repo" "$root/src"

run() {
    chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 bash -euc "$1"
}
run 'apt-get update -qq
     apt-get install -y -qq ca-certificates python3 python3-venv python3-dev gcc make git graphviz postgresql >/dev/null
     update-ca-certificates >/dev/null'
run 'cd /src && python3 --version && make demo && make test'
