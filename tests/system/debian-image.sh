#!/bin/sh
# Makes a container image of a minimal Debian from the mirror apt uses here, for building the project's image
# where no container registry can be reached: `podman build --build-arg BASE=localhost/debian:bookworm ...`.
# Does nothing when the image exists already (it is kept, so that it is made once per machine).
#
#   tests/system/debian-image.sh [IMAGE]     (default localhost/debian:<this machine's Debian release>)
#
# Needs root, debootstrap and podman (tests/system/install.sh installs them), and CONTAINERS_CONF where podman
# needs settings of its own (tests/system/containers.conf here).
set -eu

codename=$(. /etc/os-release && echo "${VERSION_CODENAME:?no Debian release in /etc/os-release}")
image=${1:-localhost/debian:$codename}
podman image exists "$image" && exit 0

# Two test runs may get here at once: the second waits, then finds the image.
exec 9>"${TMPDIR:-/tmp}/debian-image.lock"
flock 9
podman image exists "$image" && exit 0

mirror=$(apt-get indextargets --format '$(REPO_URI)' "Release: $codename" "Component: main" "Identifier: Packages" \
    2>/dev/null | head -n 1)
mirror=${mirror:-http://deb.debian.org/debian/}
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
echo "making $image: debootstrap $codename from $mirror"
debootstrap --variant=minbase "$codename" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
    cat "$rootfs.log" >&2
    rm -f "$rootfs.log"
    exit 1
}
rm -f "$rootfs.log"
# This machine's Debian sources (its mirror, updates and security), when it has them in the usual file.
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    cp /etc/apt/sources.list.d/debian.sources "$rootfs/etc/apt/sources.list.d/"
    rm -f "$rootfs/etc/apt/sources.list"
fi
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | podman import --quiet - "$image" >/dev/null
