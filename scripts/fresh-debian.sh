#!/usr/bin/env bash
# Run the README's two commands (make demo, make test) on a fresh Debian root made with debootstrap,
# from a clean clone of this checkout (committed files only) and with an empty pip cache.
# Usage, as root:  scripts/fresh-debian.sh SUITE [PYTHON ...]
#   SUITE: bookworm (Python 3.11), trixie (3.13), forky or testing (3.14), sid
#   PYTHON: python3 (the default), or another Debian package such as python3.15; with several, each
#   runs in turn on the same root, from a clone and a venv of its own, after its packages go in.
set -euo pipefail
suite=${1:?usage: $0 SUITE [PYTHON ...]  (SUITE: bookworm, trixie, forky, ...; PYTHON: python3, python3.15, ...)}
shift
pythons=("${@:-python3}")
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
repo=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "$0: needs root (debootstrap, mount, chroot)" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "$0: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
for py in "${pythons[@]}"; do
    [[ $py =~ ^python3(\.[0-9]+)?$ ]] || { echo "$0: $py: give a Python as python3 or python3.N" >&2; exit 2; }
done
# A debootstrap older than the suite has no script named after it: testing's is sid's.
scripts=${DEBOOTSTRAP_DIR:-/usr/share/debootstrap}/scripts
script=$scripts/$suite
[ -e "$script" ] || script=$scripts/sid

root=$(mktemp -d "${TMPDIR:-/var/tmp}/fresh-debian-$suite.XXXXXX")
chmod 755 "$root"   # mktemp makes it 0700: apt's _apt user must get through /
cleanup() {
    # Whatever a run left behind in the root (a database server, a worker) goes first, by its id.
    local p
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ] && kill -9 "${p#/proc/}" 2>/dev/null
    done
    for m in dev sys proc; do umount -R -l "$root/$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$root" || echo "$0: could not remove $root" >&2
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

debootstrap --variant=minbase "$suite" "$root" "$mirror" "$script" >/dev/null 2>&1 \
    || { tail -20 "$root/debootstrap/debootstrap.log" >&2; exit 1; }
mount --bind /proc "$root/proc"
for m in sys dev; do mount --rbind "/$m" "$root/$m" && mount --make-rslave "$root/$m"; done

# The network may re-sign TLS: the root trusts the host's local CA certificates.
if [ -d /usr/local/share/ca-certificates ]; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
fi
# Packages install without starting their services (postgresql's): the tests start their own.
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
# Testing's and sid's Release files may be past their Valid-Until date on a mirror; a release's are not.
apt='apt-get -qq'
case $(sed -n 's/^Suite: //p' "$root"/var/lib/apt/lists/*_Release 2>/dev/null | head -1) in
    testing | unstable) apt='apt-get -qq -o Acquire::Check-Valid-Until=false' ;;
esac

run() {
    chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 bash -euc "$1"
}
run "$apt update
     $apt install -y ca-certificates gcc make git graphviz postgresql >/dev/null
     update-ca-certificates >/dev/null"
for py in "${pythons[@]}"; do
    echo "== $suite, $py"
    run "$apt install -y $py $py-venv $py-dev >/dev/null"
    git clone -q "$repo" "$root/src-$py"
    run "cd /src-$py && $py --version && make demo PYTHON=$py && make test PYTHON=$py"
done
