#!/bin/sh
# The sandbox machine image: a Debian root file system that behaves like a
# freshly prepared CoreOS/Flatcar machine (systemd as PID 1, sshd, dockerd,
# etcd installed as etcd-member.service but not configured). The build server,
# registry and balancer use the same image with other services switched on.
# Usage: machine-image.sh ROOTFS_DIR   (run as root; the caller imports it)
set -eu
root=$1
packages=systemd,systemd-sysv,openssh-server,openssh-sftp-server,docker.io,etcd-server,etcd-client,iproute2,ca-certificates,curl,git,haproxy,docker-registry,apache2-utils,busybox-static,procps,sudo,socat,nginx
# mmdebstrap, not debootstrap: it downloads side by side and unpacks with one dpkg run (27 s
# against debootstrap's 54 s here, for the same packages). Its mirrors are this machine's apt sources when they
# are bookworm's (so bookworm-updates and security too), else deb.debian.org.
mmdebstrap --variant=minbase --include="$packages" bookworm "$root" >"$root.log" 2>&1 || { tail -n 20 "$root.log" >&2; exit 1; }

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
# No message of the day: Debian's pam_motd runs /etc/update-motd.d's scripts (run-parts, uname)
# at every SSH session, so at every command air-deploy sends (about 1 ms of a machine's CPU each).
sed -i '/pam_motd\.so/d' "$root/etc/pam.d/sshd"
chroot "$root" useradd --create-home --shell /bin/bash --groups docker,sudo core
printf 'core ALL=(ALL) NOPASSWD: ALL\n' >"$root/etc/sudoers.d/core"
chmod 0440 "$root/etc/sudoers.d/core"

# Every service's Go runtime (dockerd, containerd, etcd, the registry, the units' docker client) on
# one P: the machines share this host's CPUs, and an idle Go runtime with more Ps wakes its own
# threads more often (an idle etcd member took about a fifth less CPU here with GOMAXPROCS=1).
mkdir -p "$root/etc/systemd/system.conf.d"
printf '[Manager]\nDefaultEnvironment=GOMAXPROCS=1\n' >"$root/etc/systemd/system.conf.d/air-sandbox-go.conf"

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

# Flatcar's OS updates, stood in for: /etc/os-release names a Flatcar version; update_engine_client
# -status answers as Flatcar's does, with an update staged once `fab sandbox.os-update` wrote its
# version to $staged; at the next boot (the container's restart) that version becomes the
# machine's and nothing is staged any more, as when Flatcar boots its other partition.
rm -f "$root/etc/os-release"
cat >"$root/etc/os-release" <<'OS'
NAME="Flatcar Container Linux (air-deploy sandbox stand-in)"
ID=flatcar
ID_LIKE=coreos
VERSION=4081.2.0
VERSION_ID=4081.2.0
PRETTY_NAME="Flatcar Container Linux (air-deploy sandbox stand-in)"
OS
staged=/var/lib/update_engine/air-sandbox-staged
mkdir -p "$root/var/lib/update_engine"
cat >"$root/usr/bin/update_engine_client" <<SCRIPT
#!/bin/sh
# Stand-in for Flatcar's update_engine_client: -status only.
[ "\$1" = -status ] || { echo "update_engine_client (sandbox stand-in): only -status" >&2; exit 64; }
echo "LAST_CHECKED_TIME=\$(date +%s)"
echo "PROGRESS=0.000000"
if [ -s $staged ]; then
  echo "CURRENT_OP=UPDATE_STATUS_UPDATED_NEED_REBOOT"; echo "NEW_VERSION=\$(cat $staged)"; echo "NEW_SIZE=1"
else
  echo "CURRENT_OP=UPDATE_STATUS_IDLE"; echo "NEW_VERSION=0.0.0"; echo "NEW_SIZE=0"
fi
SCRIPT
chmod 0755 "$root/usr/bin/update_engine_client"
mkdir -p "$root/usr/lib/air-sandbox"
cat >"$root/usr/lib/air-sandbox/os-activate" <<SCRIPT
#!/bin/sh
set -e
v=\$(cat $staged)
sed -i "s/^VERSION=.*/VERSION=\$v/; s/^VERSION_ID=.*/VERSION_ID=\$v/" /etc/os-release
rm -f $staged
SCRIPT
chmod 0755 "$root/usr/lib/air-sandbox/os-activate"
printf '#!/bin/sh\n# Stages OS version $1 as update-engine would (sandbox stand-in).\nset -e\nprintf "%%s\\n" "$1" > %s.new && mv -f %s.new %s\n' \
  "$staged" "$staged" "$staged" >"$root/usr/lib/air-sandbox/os-stage"
chmod 0755 "$root/usr/lib/air-sandbox/os-stage"
cat >"$root/etc/systemd/system/air-sandbox-os-activate.service" <<UNIT
[Unit]
Description=Boots the staged OS version (sandbox stand-in for Flatcar's partition switch)
DefaultDependencies=no
Before=sysinit.target update-engine.service
ConditionFileNotEmpty=$staged

[Service]
Type=oneshot
ExecStart=/usr/lib/air-sandbox/os-activate

[Install]
WantedBy=sysinit.target
UNIT
chroot "$root" systemctl enable air-sandbox-os-activate.service

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
