#!/usr/bin/env bash
# A real S3 server for tests and development: single-node Ceph (one monitor, one
# in-memory OSD, radosgw) on 127.0.0.1 with auth off, after shared/recipes/ceph-rgw-up.sh.
#   scripts/s3-up.sh DIR PORT     S3 on http://127.0.0.1:PORT, keys devaccess / devsecret
#   scripts/s3-down.sh DIR        stops it
# Installs the Debian packages when radosgw is missing (needs root and apt).
# The monitor takes two free ports of its own, so several clusters can run side by side.
# On success DIR/s3.env holds GPGPU_S3_* settings for it.
# Exit status: 0 ready, 1 failed to start (logs under DIR/log), 3 packages not installable.
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 DIR PORT" >&2
  exit 1
fi
C=$1
PORT=$2
HERE=$(cd "$(dirname "$0")" && pwd)
PACKAGES="ceph-mon ceph-osd radosgw ceph-common"

if ! command -v radosgw >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "s3-up: radosgw is missing and cannot be installed here (needs root and apt-get)" >&2
    exit 3
  fi
  echo "s3-up: installing $PACKAGES" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends $PACKAGES; } \
      >/tmp/s3-up-apt.$$.log 2>&1; then
    tail -20 /tmp/s3-up-apt.$$.log >&2
    echo "s3-up: apt-get install $PACKAGES failed (log above)" >&2
    exit 3
  fi
  rm -f /tmp/s3-up-apt.$$.log
fi

# DIR is wiped: refuse anything that is neither empty nor an earlier cluster of ours.
if [ -e "$C" ] && [ -n "$(ls -A "$C" 2>/dev/null)" ] && [ ! -f "$C/ceph.conf" ]; then
  echo "s3-up: $C is not empty and holds no earlier cluster; refusing to wipe it" >&2
  exit 1
fi
"$HERE/s3-down.sh" "$C" 2>/dev/null || true
rm -rf "$C"
mkdir -p "$C"/{run,log,mon,osd,rgw}
C=$(cd "$C" && pwd -P)
cd "$C"

fail() {
  trap - ERR
  echo "s3-up: $1" >&2
  for f in log/mon.out log/osd.out log/rgw.out; do
    [ -s "$f" ] && { echo "--- $f" >&2; tail -15 "$f" >&2; }
  done
  "$HERE/s3-down.sh" "$C" >/dev/null 2>&1 || true
  exit 1
}
trap 'fail "command failed at line $LINENO"' ERR

read -r MON2 MON1 < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
)
MON_ADDR="[v2:127.0.0.1:$MON2,v1:127.0.0.1:$MON1]"
FSID=$(python3 -c 'import uuid; print(uuid.uuid4())')
cat > ceph.conf <<EOF
[global]
fsid = $FSID
mon host = $MON_ADDR
mon initial members = a
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
osd pool default pg num = 8
osd pool default pgp num = 8
mon max pg per osd = 1000
osd objectstore = memstore
memstore device bytes = 2147483648
run dir = $C/run
admin socket = $C/run/\$name.asok
log file = $C/log/\$name.log
mon data = $C/mon/\$cluster-\$id
osd data = $C/osd/\$cluster-\$id
keyring = $C/keyring
ms bind ipv6 = false
public addr = 127.0.0.1
# With auth off the monitor still needs these modes, or clients cannot connect.
ms mon client mode = crc secure
ms client mode = crc secure
mon cluster log file = $C/log/cluster.log
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$PORT
rgw data = $C/rgw
EOF
ceph_() { timeout 30 ceph -c "$C/ceph.conf" "$@"; }

ceph-authtool --create-keyring keyring --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool keyring --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' >/dev/null
monmaptool --create --addv a "$MON_ADDR" --fsid "$FSID" monmap >/dev/null
ceph-mon -c ceph.conf --mkfs -i a --monmap monmap --keyring keyring
ceph-mon -c "$C/ceph.conf" -i a -f </dev/null >log/mon.out 2>&1 &
echo $! > run/mon.pid
up=""
for _ in $(seq 1 100); do
  if timeout 5 ceph -c ceph.conf status >/dev/null 2>&1; then up=1; break; fi
  kill -0 "$(cat run/mon.pid)" 2>/dev/null || fail "ceph-mon exited"
  sleep 0.2
done
[ -n "$up" ] || fail "ceph-mon did not answer"

OSD_UUID=$(python3 -c 'import uuid; print(uuid.uuid4())')
ID=$(ceph_ osd new "$OSD_UUID")
mkdir -p "osd/ceph-$ID"
ceph-osd -c ceph.conf -i "$ID" --mkfs --osd-uuid "$OSD_UUID" >log/osd-mkfs.out 2>&1
ceph_ osd crush add-bucket localhost host >/dev/null 2>&1
ceph_ osd crush move localhost root=default >/dev/null 2>&1
ceph_ osd crush add "osd.$ID" 1.0 host=localhost >/dev/null 2>&1
ceph-osd -c "$C/ceph.conf" -i "$ID" -f </dev/null >log/osd.out 2>&1 &
echo $! > run/osd.pid
up=""
for _ in $(seq 1 100); do
  if ceph_ osd stat 2>/dev/null | grep -q '1 up'; then up=1; break; fi
  kill -0 "$(cat run/osd.pid)" 2>/dev/null || fail "ceph-osd exited"
  sleep 0.3
done
[ -n "$up" ] || fail "the OSD did not come up"

radosgw -c "$C/ceph.conf" -n client.rgw.a -f </dev/null >log/rgw.out 2>&1 &
echo $! > run/rgw.pid
up=""
for _ in $(seq 1 300); do
  # An anonymous GET / on RGW answers with an (empty) bucket listing.
  if curl -sf "http://127.0.0.1:$PORT/" 2>/dev/null | grep -q ListAllMyBucketsResult; then
    up=1; break
  fi
  kill -0 "$(cat run/rgw.pid)" 2>/dev/null || fail "radosgw exited (port $PORT taken?)"
  sleep 0.2
done
[ -n "$up" ] || fail "radosgw did not answer on 127.0.0.1:$PORT"
timeout 60 radosgw-admin -c ceph.conf user create --uid=dev --display-name=dev \
  --access-key=devaccess --secret=devsecret >/dev/null

cat > s3.env <<EOF
GPGPU_STORAGE=s3
GPGPU_S3_ENDPOINT=http://127.0.0.1:$PORT
GPGPU_S3_ACCESS_KEY=devaccess
GPGPU_S3_SECRET_KEY=devsecret
GPGPU_S3_REGION=us-east-1
EOF
trap - ERR
echo "s3 ready: http://127.0.0.1:$PORT key=devaccess secret=devsecret;" \
  "pids mon=$(cat run/mon.pid) osd=$(cat run/osd.pid) rgw=$(cat run/rgw.pid)"
