#!/usr/bin/env bash
# Stops what scripts/s3-up.sh started in DIR, by the pids it recorded; the logs stay.
#   scripts/s3-down.sh DIR
set -uo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 DIR" >&2
  exit 1
fi
C=$(cd "$1" 2>/dev/null && pwd -P) || exit 0
pids=()
for name in rgw osd mon; do
  f=$C/run/$name.pid
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  rm -f "$f"
  # Only a daemon of this cluster: a recorded pid may since belong to something else.
  if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$C/ceph.conf"; then
    kill "$pid" 2>/dev/null && pids+=("$pid")
  fi
done
running() {  # a zombie nobody has reaped yet has stopped too
  local state
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
  [ -n "$state" ] && [ "$state" != Z ]
}
# radosgw takes about 5 s to stop on SIGTERM; the OSD keeps its data in memory, which
# goes either way, so after a second what still runs is killed.
for _ in $(seq 1 10); do
  alive=()
  for pid in "${pids[@]}"; do running "$pid" && alive+=("$pid"); done
  [ ${#alive[@]} -eq 0 ] && exit 0
  sleep 0.1
done
kill -9 "${alive[@]}" 2>/dev/null
exit 0
