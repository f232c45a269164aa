#!/usr/bin/env bash
# The Debian packages the test suite's real services need: Ceph's RADOS Gateway (S3),
# a Docker engine, busybox for offline test images, Chromium for the browser tests (tests/web),
# and bubblewrap, the process runtime's sandbox (`make up` needs only that one:
# `system-deps.sh sandbox`). One apt transaction, only if missing.
set -euo pipefail
need=()
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
if [ "${1:-}" = sandbox ]; then
  if [ ${#need[@]} -eq 0 ]; then exit 0; fi
  if [ "$(id -u)" != 0 ]; then
    echo "system-deps: bubblewrap is missing and only root can install it: sudo apt-get install" \
      "bubblewrap (the provider agents refuse to run jobs without it)" >&2
    exit 0
  fi
  echo "system-deps: installing bubblewrap (the jobs' sandbox)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends bubblewrap >/dev/null
  exit 0
fi
command -v radosgw >/dev/null 2>&1 || need+=(ceph-mon ceph-osd radosgw ceph-common)
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)  # v1: validates the stack file
command -v chromium >/dev/null 2>&1 || need+=(chromium)  # tests/web (playwright drives it)
[ -x /bin/busybox ] || command -v busybox >/dev/null 2>&1 || need+=(busybox-static)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "system-deps: missing ${need[*]}; run as root to install them (the tests that need them skip)" >&2
  exit 0
fi
echo "system-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
