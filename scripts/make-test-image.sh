#!/usr/bin/env bash
# A tiny image made offline, for tests: busybox (static) and its applets as /bin/*.
#   DOCKER_HOST=unix://DIR/docker.sock scripts/make-test-image.sh [TAG]   (default gpgpu-test:latest)
# Installs busybox-static when it is missing (needs root and apt). Prints the image id.
# There is no registry here: the image comes from `docker import` of a rootfs tarball.
set -euo pipefail

TAG=${1:-gpgpu-test:latest}
BUSYBOX=/bin/busybox
if ! "$BUSYBOX" --list >/dev/null 2>&1 || ldd "$BUSYBOX" >/dev/null 2>&1; then
  # Missing, or a dynamically linked one that would not run in an empty rootfs.
  BUSYBOX=""
  if [ -x /usr/bin/busybox ] && ! ldd /usr/bin/busybox >/dev/null 2>&1; then
    BUSYBOX=/usr/bin/busybox
  fi
fi
if [ -z "$BUSYBOX" ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "make-test-image: busybox-static is missing and cannot be installed here" >&2
    exit 3
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends busybox-static; } \
      >/tmp/make-test-image-apt.$$.log 2>&1; then
    tail -20 /tmp/make-test-image-apt.$$.log >&2
    echo "make-test-image: apt-get install busybox-static failed (log above)" >&2
    exit 3
  fi
  rm -f /tmp/make-test-image-apt.$$.log
  BUSYBOX=/bin/busybox
fi

ROOT=$(mktemp -d)
trap 'rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT"/{bin,etc,tmp,work,proc,sys,dev}
chmod 1777 "$ROOT/tmp"
cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in sh cat echo sleep wget nc id touch ls mkdir rm env true false seq head tail \
    grep sed wc dd yes kill ps find tr timeout chmod ln; do
  ln -s busybox "$ROOT/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
  >"$ROOT/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$ROOT/etc/group"
# Name lookups of a static glibc read this. Note: busybox 1.35's `wget -T N` crashes
# (SIGSEGV) whatever the network; bound a fetch with `timeout N wget ...` instead.
printf 'passwd: files\ngroup: files\nhosts: files dns\nservices: files\n' \
  >"$ROOT/etc/nsswitch.conf"

tar -C "$ROOT" --numeric-owner --owner=0 --group=0 -c . \
  | docker import --change 'ENV PATH=/bin' --change 'CMD ["/bin/sh"]' - "$TAG" >/dev/null
docker image inspect --format '{{.Id}}' "$TAG"
