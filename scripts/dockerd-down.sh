#!/usr/bin/env bash
# Stops what scripts/dockerd-up.sh started in DIR: its containers, then the engine (and
# the containerd it started), by the pid it recorded; after a crash, what the engine left
# running or mounted under DIR. The state under DIR stays.
#   scripts/dockerd-down.sh DIR
set -uo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 DIR" >&2
  exit 1
fi
D=$(cd "$1" 2>/dev/null && pwd -P) || exit 0
SOCK=unix://$D/docker.sock

pid=""
for f in "$D/dockerd.pid" "$D/dockerd.launcher.pid"; do
  [ -f "$f" ] || continue
  p=$(cat "$f")
  # Only the engine of this DIR: a recorded pid may since belong to something else.
  if tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline" | grep -qF -- "$D/docker.sock"; then
    pid=$p
    break
  fi
done
rm -f "$D/dockerd.launcher.pid" "$D/dockerd.pid"

running() {  # a zombie nobody has reaped yet has stopped too
  local state
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
  [ -n "$state" ] && [ "$state" != Z ]
}

if [ -n "$pid" ]; then
  # Containers first, so that nothing a test started outlives the engine.
  ids=$(timeout 10 docker -H "$SOCK" ps -aq 2>/dev/null || true)
  if [ -n "$ids" ]; then
    # shellcheck disable=SC2086
    timeout 20 docker -H "$SOCK" rm -f $ids >/dev/null 2>&1 || true
  fi
  # dockerd stops the containerd it started on its way out.
  kill "$pid" 2>/dev/null
  for _ in $(seq 1 150); do
    running "$pid" || break
    sleep 0.1
  done
  if running "$pid"; then
    echo "dockerd-down: dockerd $pid did not stop in 15 s; killing it" >&2
    kill -9 "$pid" 2>/dev/null
  fi
fi

# What a crashed or killed engine leaves: its containerd, and the shims that keep its
# containers running. Killing a container's first process ends its pid namespace.
for p in $(pgrep -f -- "$D/exec/containerd/" 2>/dev/null); do
  case "$(tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline")" in
    *containerd-shim*) for c in $(pgrep -P "$p"); do kill -9 "$c" 2>/dev/null; done ;;
  esac
  kill -9 "$p" 2>/dev/null
done

# The engine leaves its default network namespace mounted (DIR/exec/netns/default),
# and a killed one its overlays too: unmount what lies under DIR, deepest first.
for _ in 1 2 3; do
  mounts=$(awk -v d="$D/" 'index($2, d) == 1 || $2 == substr(d, 1, length(d) - 1) { print $2 }' \
    /proc/self/mounts | sort -r)
  [ -n "$mounts" ] || break
  for m in $mounts; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
  sleep 0.2
done
exit 0
