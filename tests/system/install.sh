#!/bin/sh
# Installs the Debian packages the test suite runs for real (sandbox, databases, schedulers, browser,
# containers), each only when missing, so that `make test` sets up a fresh machine by itself.
# Needs root (or passwordless sudo); prints what it installs.
set -eu

# command that must exist (or, starting with /, a file pattern that must match) -> package that brings it.
# PostgreSQL's programs are not on PATH on Debian: they live in /usr/lib/postgresql/<version>/bin.
WANTED="
bwrap:bubblewrap
/usr/lib/postgresql/*/bin/initdb:postgresql
slurmctld:slurmctld
slurmd:slurmd
sbatch:slurm-client
munged:munge
chromium:chromium
podman:podman
runc:runc
/usr/lib/podman/netavark:netavark
/usr/lib/podman/aardvark-dns:aardvark-dns
podman-compose:podman-compose
debootstrap:debootstrap
curl:curl
unzip:unzip
"

have() {
    case "$1" in
        /*) for file in $1; do [ -x "$file" ] && return 0; done; return 1 ;;
        *) command -v "$1" >/dev/null 2>&1 ;;
    esac
}

missing=""
for pair in $WANTED; do
    have "${pair%%:*}" || missing="$missing ${pair#*:}"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -eq 0 ]; then as_root=""; else as_root="sudo -n"; fi
echo "installing Debian packages for the tests:$missing"
export DEBIAN_FRONTEND=noninteractive
$as_root apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1 || {
    $as_root apt-get update -q >/dev/null
    $as_root apt-get install -y -q --no-install-recommends $missing >/dev/null
}
