#!/usr/bin/env bash
# A real Docker engine for tests and development, on a socket of its own, with no
# bridge and no iptables changes (after shared/recipes: "A real Docker engine").
#   scripts/dockerd-up.sh DIR      engine on unix://DIR/docker.sock, state under DIR
#   scripts/dockerd-down.sh DIR    stops it
# Installs docker.io when dockerd is missing (needs root and apt).
# On success prints DOCKER_HOST=unix://DIR/docker.sock (also written to DIR/docker.env).
# Exit status: 0 ready, 1 failed to start (log in DIR/dockerd.log), 3 not installable.
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 DIR" >&2
  exit 1
fi
HERE=$(cd "$(dirname "$0")" && pwd)

if ! command -v dockerd >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "dockerd-up: dockerd is missing and cannot be installed here (needs root and apt-get)" >&2
    exit 3
  fi
  echo "dockerd-up: installing docker.io" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends docker.io; } \
      >/tmp/dockerd-up-apt.$$.log 2>&1; then
    tail -20 /tmp/dockerd-up-apt.$$.log >&2
    echo "dockerd-up: apt-get install docker.io failed (log above)" >&2
    exit 3
  fi
  rm -f /tmp/dockerd-up-apt.$$.log
fi
if [ "$(id -u)" != 0 ]; then
  echo "dockerd-up: dockerd needs root (rootless mode is not set up here)" >&2
  exit 3
fi

mkdir -p "$1"
D=$(cd "$1" && pwd -P)
"$HERE/dockerd-down.sh" "$D" >/dev/null 2>&1 || true
# A unix socket path is limited to 107 bytes.
if [ ${#D} -gt 90 ]; then
  echo "dockerd-up: $D is too long a path for a unix socket; pick a shorter DIR" >&2
  exit 1
fi
mkdir -p "$D/root" "$D/exec"
SOCK=unix://$D/docker.sock

dockerd --data-root "$D/root" --exec-root "$D/exec" -H "$SOCK" \
  --pidfile "$D/dockerd.pid" --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
  </dev/null >"$D/dockerd.log" 2>&1 &
pid=$!
echo "$pid" >"$D/dockerd.launcher.pid"

for _ in $(seq 1 300); do
  if docker -H "$SOCK" info >/dev/null 2>&1; then
    echo "DOCKER_HOST=$SOCK" >"$D/docker.env"
    echo "DOCKER_HOST=$SOCK"
    exit 0
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "dockerd-up: dockerd exited; last lines of $D/dockerd.log:" >&2
    tail -15 "$D/dockerd.log" >&2
    exit 1
  fi
  sleep 0.1
done
echo "dockerd-up: dockerd did not answer on $SOCK in 30 s; last lines of $D/dockerd.log:" >&2
tail -15 "$D/dockerd.log" >&2
"$HERE/dockerd-down.sh" "$D" >/dev/null 2>&1 || true
exit 1
