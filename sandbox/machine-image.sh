#!/bin/sh
# The sandbox machine image: a Debian root file system that behaves like a
# freshly prepared CoreOS/Flatcar machine (systemd as PID 1, sshd, dockerd,
# etcd installed as etcd-member.service but not configured). The build server,
# registry and balancer use the same image with other services switched on.
# Usage: machine-image.sh ROOTFS_DIR   (run as root; the caller imports it)
set -eu
root=$1
packages=systemd,systemd-sysv,openssh-server,openssh-sftp-server,docker.io,etcd-server,etcd-client,iproute2,ca-certificates,curl,git,haproxy,docker-registry,apache2-utils,busybox-static,procps,sudo,socat,nginx
debootstrap --variant=minbase --include="$packages" bookworm "$root" >"$root.log" 2>&1 || { tail -n 20 "$root.log" >&2; exit 1; }

# Host keys are made on each machine's first boot, never shared through the image: an ed25519
# one only (what the sandbox's known_hosts lists; RSA's key generation cost each boot 0.35 s of CPU).
rm -f "$root"/etc/ssh/ssh_host_*
mkdir -p "$root/etc/systemd/system/ssh.service.d"
cat >"$root/etc/systemd/system/ssh.service.d/host-keys.conf" <<'UNIT'
[Service]
ExecStartPre=
ExecStartPre=/bin/sh -c 'test -e /etc/ssh/ssh_host_ed25519_key || ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key'
ExecStartPre=/usr/sbin/sshd -t
UNIT

# As on CoreOS and Flatcar: root may not log in over SSH; `core` may, with passwordless sudo
# and the docker group. Its authorized keys come from the cloud config.
mkdir -p "$root/etc/ssh/sshd_config.d"
printf 'PermitRootLogin no\nHostKey /etc/ssh/ssh_host_ed25519_key\n' >"$root/etc/ssh/sshd_config.d/air-sandbox.conf"
chroot "$root" useradd --create-home --shell /bin/bash --groups docker,sudo core
printf 'core ALL=(ALL) NOPASSWD: ALL\n' >"$root/etc/sudoers.d/core"
chmod 0440 "$root/etc/sudoers.d/core"

# Stand-ins for Flatcar's OS update units (they only run): install pauses them and puts them back.
for unit in update-engine locksmithd; do
  cat >"$root/etc/systemd/system/$unit.service" <<UNIT
[Unit]
Description=Stand-in for Flatcar's $unit

[Service]
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
UNIT
  chroot "$root" systemctl enable "$unit.service"
done

# Flatcar's unit name for etcd; configured later by a drop-in with ETCD_* settings.
cat >"$root/etc/systemd/system/etcd-member.service" <<'UNIT'
[Unit]
Description=etcd key-value store (member)
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
User=etcd
Environment=ETCD_DATA_DIR=/var/lib/etcd/member
ExecStart=/usr/bin/etcd
Restart=on-failure
RestartSec=2
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
UNIT
chroot "$root" systemctl mask etcd.service
# Role services start only where the sandbox switches them on. (nginx is here for its files: the
# build server copies it into the sample router's image; socat reaches haproxy's admin sockets.)
chroot "$root" systemctl disable haproxy.service docker-registry.service nginx.service
# Nothing in a container needs these, and they slow the boot.
chroot "$root" systemctl mask systemd-udevd.service systemd-udev-trigger.service getty@tty1.service console-getty.service systemd-logind.service apt-daily.timer apt-daily-upgrade.timer e2scrub_reap.service e2scrub_all.timer
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
