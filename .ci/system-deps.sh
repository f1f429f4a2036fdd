#!/usr/bin/env bash
# Install the Debian packages the tests and the demo run for real (etcd 3.4, ClickHouse 18.16, Ceph 16.2's
# RADOS Gateway), without starting their services: the tests start their own on free loopback ports.
set -euo pipefail
# chromium + fonts: the HTML drill report is checked in a real browser; zstd: the repository benchmark's floor;
# prometheus: its promtool checks and unit-tests the alert rules in deploy/;
# podman + runc + debootstrap: the image is built on a debootstrap base and run (tests/integration/test_image.py);
# ceph-*, radosgw: a single-node Ceph with its S3 gateway, the real S3 server beside moto (tests/rgw.py)
packages=(etcd-server etcd-client clickhouse-server clickhouse-client chromium fonts-liberation zstd prometheus
  podman runc debootstrap ceph-mon ceph-osd ceph-mgr radosgw ceph-common)
need=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || need+=("$package")
done
[ ${#need[@]} -eq 0 ] && exit 0

echo "installing Debian packages (missing: ${need[*]}): ${packages[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
policy=/usr/sbin/policy-rc.d
added_policy=""
if [ ! -e "$policy" ]; then
  # exit 101 = "action forbidden": package scripts must not start etcd, ClickHouse or Ceph here
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod +x "$policy"
  added_policy=1
fi
trap '[ -n "$added_policy" ] && $sudo rm -f "$policy"' EXIT
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
for binary in etcd etcdctl clickhouse-server clickhouse-client chromium zstd promtool podman runc debootstrap \
  ceph-mon ceph-osd ceph-mgr radosgw ceph; do
  command -v "$binary" >/dev/null || { echo "error: $binary is still missing after apt-get install" >&2; exit 1; }
done
