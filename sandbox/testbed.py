"""The sandbox: the `local` target cluster, made of containers on this machine.

It owns everything about the local test bed: the machine image (Debian
packages via mmdebstrap, cached by a hash of its recipe), the Docker network
and containers that act as CoreOS machines (systemd as PID 1, sshd, dockerd,
etcd-member.service not yet configured), the build server with the sample
application's git repository, the registry (TLS from the sandbox CA, htpasswd
auth), and the haproxy balancer. A second cluster, `local2`, has two machines
of its own and shares build server, registry and balancer with `local` (as
stage and prod share them in the seed). ``up`` is idempotent: what is running
and configured is reused, what is missing is made. What it made (addresses,
key, CA, credentials) is written to ``.sandbox/cluster.yaml`` and
``.sandbox/local2.yaml``, which ``clusters/local.yaml`` and
``clusters/local2.yaml`` include. Nothing here is used against real clusters.
"""
from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import yaml

import cloudconfig
from cloudconfig import USER_DATA_PATHS
from sandbox import image as machine_image
from tasks.commands import build_scripts
from tasks.model import cluster as cluster_config
from tasks.model.errors import AirError, ConfigError
from tasks.model.frozen import frozen
from tasks.net.executor import parallel
from tasks.net.progress import say
from tasks.runbooks import records
from tasks.runbooks.cli import air_task

ROOT = cluster_config.PROJECT_ROOT
BASE_IMAGE_DIR = ROOT / "sandbox" / "base-image"
APP_DIR = ROOT / "sandbox" / "air"
WEBSITE_DIR = ROOT / "sandbox" / "website"  # the static website: a second repository
STATE = Path(os.environ.get("AIR_SANDBOX_STATE", ROOT / ".sandbox"))

# A second sandbox can run beside the first (another checkout, other names and subnet).
PREFIX = os.environ.get("AIR_SANDBOX_PREFIX", "air-sandbox")
NETWORK = PREFIX
SUBNET = os.environ.get("AIR_SANDBOX_SUBNET", "10.213.7")  # a /24; fixed addresses keep the cluster file stable
BASE_IMAGE = "air-sandbox/base:1"  # the sample app's FROM; built on the build server
ETCD_CLIENT_IMAGE = "air-sandbox/etcd-client:1"  # the base image plus Debian's etcdctl: FROM of what reads etcd
NGINX_IMAGE = "air-sandbox/nginx:1"  # the sample router's FROM: the etcd client image plus Debian's nginx
REGISTRY_PORT = 5000
CLUSTERS = ("local", "local2")  # the sandbox's clusters; the first owns the spares
OTHER_MACHINES = 2  # machines of local2
REPOSITORY = "/srv/git/air.git"
WEBSITE_REPOSITORY = "/srv/git/website.git"  # clusters/local.yaml names it for static_website
WEBSITE_BRANCH = "develop"
WEBSITE = "static_website"
RECIPE_FILE = "air-sandbox-recipe"  # in a bare repository: the content hash it was made from
NAMESPACE = "aircloak"
REGISTRY_USER = "air"
# The machines' account. Distribution's htpasswd auth lets every account push: this one stands in
# for a real registry's pull-only account, so the sandbox shows which account machines get.
REGISTRY_PULL_USER = "air-pull"
CREDENTIALS_FILES = {REGISTRY_USER: "registry-credentials.yaml", REGISTRY_PULL_USER: "registry-pull-credentials.yaml"}
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key.pub"
MARKER = "/etc/air-sandbox"  # a prepared container's configuration ID (`_config_id`)
LABEL = "air.sandbox.role"
OWNER = "air.sandbox.name"  # which sandbox a container belongs to
CONFIG = "air.sandbox.config"  # a machine's: the configuration it was prepared with (``_config_id``)
# The sample backend's "database" (the schema its release command migrates to): one Docker volume per
# cluster, mounted on each of its machines inside the backend's data folder, so that every machine
# sees what a migration run on one of them did, as a database server would have it.
DATABASE_MOUNT = "/var/lib/air/air_backend/database"
REBOOTS = "on-failure"  # a machine container's restart policy: its reboot is the container's restart
OS_STAGE = "/usr/lib/air-sandbox/os-stage"  # the image's stand-in of update-engine staging an update


@frozen
class Node:
    name: str
    address: str
    role: str  # build, registry, balancer, machine, spare
    cluster: str = "local"  # the cluster a machine or spare belongs to

    @property
    def is_machine(self) -> bool:
        return self.role in ("machine", "spare")

    @property
    def user_data(self) -> str:
        """Where this machine keeps its cloud config: every second one like Flatcar, the others like CoreOS."""
        flatcar = self.name.rsplit("-m", 1)[-1].isdigit() and int(self.name.rsplit("-m", 1)[-1]) % 2 == 0
        return USER_DATA_PATHS[0] if flatcar else USER_DATA_PATHS[-1]


def layout(machines: int, spares: int, second: bool = True) -> list:
    """The containers a sandbox of that size has, with their fixed addresses; ``second``: with the
    machines of the second cluster."""
    if machines < 1 or spares < 0 or machines + spares > 40:
        raise ConfigError(f"sandbox: --machines must be 1..40 and --spares 0..{40 - machines}")
    nodes = [Node(f"{PREFIX}-build", f"{SUBNET}.10", "build"),
             Node(f"{PREFIX}-registry", f"{SUBNET}.11", "registry"),
             Node(f"{PREFIX}-balancer", f"{SUBNET}.12", "balancer")]
    for i in range(machines + spares):
        nodes.append(Node(f"{PREFIX}-m{i + 1}", f"{SUBNET}.{21 + i}", "machine" if i < machines else "spare"))
    for i in range(OTHER_MACHINES if second else 0):
        nodes.append(Node(f"{PREFIX}-{CLUSTERS[1]}-m{i + 1}", f"{SUBNET}.{61 + i}", "machine", CLUSTERS[1]))
    return nodes


def second_cluster_nodes() -> list:
    """The second cluster's machines (``layout``'s, whatever the sandbox's size)."""
    return [n for n in layout(1, 0) if n.cluster == CLUSTERS[1]]


# ---------------------------------------------------------------- local commands

def sh(*args, input=None, check=True, timeout=600) -> subprocess.CompletedProcess:
    """Run a command on this machine (argv, never a shell string)."""
    proc = subprocess.run(list(args), input=input, capture_output=True, timeout=timeout,
                          text=not isinstance(input, bytes))
    if check and proc.returncode != 0:
        err = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode(errors="replace")
        raise AirError(f"sandbox: `{' '.join(shlex.quote(a) for a in args[:4])} ...` failed: "
                       f"{(err.strip().splitlines() or ['(no output)'])[-1]}")
    return proc


def docker(*args, **kwargs):
    return sh("docker", *args, **kwargs)


CGROUPS = Path("/sys/fs/cgroup")


def container_cgroups(container_id: str) -> list:
    """The control groups on this machine of a container a sandbox machine's engine runs (its
    engine makes them under the host's ``docker`` group: one per controller, or one under cgroup v2)."""
    return [*CGROUPS.glob(f"*/docker/{container_id}"), *CGROUPS.glob(f"docker/{container_id}")]


def remove_containers(*names: str, volumes: bool = False) -> None:
    """``docker rm -f`` of sandbox containers, with the control groups of the containers their own
    engines ran: killed with the engine, nothing removes those, and they would pile up on this
    machine run after run (some thousands slow every container start)."""
    def inner(name: str) -> list:
        try:
            ran = docker("exec", name, "docker", "ps", "-q", "--no-trunc", check=False, timeout=10)
        except subprocess.TimeoutExpired:  # a hung or paused container: removed all the same
            return engine_containers(name)
        return ran.stdout.split() if ran.returncode == 0 else engine_containers(name)
    ids = [i for found in parallel(inner, list(names)) for i in found if re.fullmatch(r"[0-9a-f]{64}", i)]
    docker("rm", "-f", *(["-v"] if volumes else []), *names)
    for path in (p for i in ids for p in container_cgroups(i)):
        try:
            path.rmdir()  # empty now that its processes are gone; refused (and left) otherwise
        except OSError:
            pass


def engine_containers(name: str) -> list:
    """The IDs of the containers the engine of machine ``name`` keeps in its volume: what it ran,
    read from this machine when it does not answer (killed, as test_etcd_backup does, or paused)."""
    found = docker("volume", "inspect", "-f", "{{.Mountpoint}}", f"{name}-docker", check=False)
    if found.returncode != 0:
        return []
    try:
        return [p.name for p in (Path(found.stdout.strip()) / "containers").iterdir()]
    except OSError:  # none kept, or not readable by this user (nor are the control groups, then)
        return []


def inside(node: str, script: str, input=None, check=True, timeout=300) -> str:
    """Run a shell script in a sandbox container (as its root); return its output."""
    flags = ["-i"] if input is not None else []
    proc = docker("exec", *flags, node, "sh", "-ec", script, input=input, check=False, timeout=timeout)
    if check and proc.returncode != 0:
        err = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode(errors="replace")
        raise AirError(f"sandbox: {node}: {script.splitlines()[0][:60]}... failed: "
                       f"{' | '.join(err.strip().splitlines()[-3:])}")
    return proc.stdout if isinstance(proc.stdout, str) else proc.stdout.decode()


@frozen
class Put:
    """A file for ``put_files``: its path, content (text or bytes), mode and ``user:group`` (root's
    when None)."""
    path: str
    content: object
    mode: int = 0o644
    owner: Optional[str] = None


def files_tar(files) -> bytes:
    """An uncompressed tar of ``files`` (``Put``), paths from the root, each with its mode and its
    owner's names (root extracts them as they are). Pure."""
    import tarfile  # here: `fab` starting has no use for it
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for file in files:
            data = file.content if isinstance(file.content, bytes) else file.content.encode()
            info = tarfile.TarInfo(file.path.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), file.mode, int(time.time())
            info.uname, info.gname = (file.owner or "root:root").split(":")
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def put_files(node: str, files, then: str = "") -> str:
    """Write ``files`` (``Put``) into a container in one ``docker exec`` (a tar on its standard
    input: a `docker exec` costs about 60 ms of this machine's CPU, and a machine made afresh had
    about ten); then run ``then`` there. Returns what ``then`` printed."""
    return inside(node, "tar -x -C /" + (f" && {then}" if then else ""), input=files_tar(files))



def engine_ready() -> None:
    try:
        docker("info", "--format", "{{.ServerVersion}}", timeout=20)
    except (AirError, FileNotFoundError, subprocess.TimeoutExpired):
        raise AirError("sandbox: no Docker engine answers on this machine (start dockerd; see .ci/run)") from None


# ---------------------------------------------------------------- the machine image

def ensure_image() -> str:
    """The machine image's tag (``sandbox.image``), built first when the engine does not have it."""
    return machine_image.ensure_image(say)


# ---------------------------------------------------------------- secrets and keys (on this machine)

# The sandbox's keys (its CA, the registry's and the router's TLS keys) are P-256, not RSA: every
# TLS handshake signs with the server's key, and RSA-2048's arithmetic was a fifth of the registry's
# own CPU samples (perf, over test_deploy). A state made before keeps its RSA keys; they still work.
CURVE = "prime256v1"


def ensure_local_files() -> None:
    """The sandbox's key pair, CA, registry certificate, credentials and app secrets."""
    STATE.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name, comment in (("id_ed25519", "air-sandbox"), ("admin_ed25519", "the administrator's own")):
        if not (STATE / name).exists():
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(STATE / name))
    if not (STATE / "ca.crt").exists():
        sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", f"ec_paramgen_curve:{CURVE}", "-nodes",
           "-days", "3650", "-subj", "/CN=air-sandbox CA", "-keyout", str(STATE / "ca.key"), "-out", str(STATE / "ca.crt"))
        os.chmod(STATE / "ca.key", 0o600)
    registry_ip = _node("registry").address
    sign_certificate(STATE, f"{PREFIX}-registry", f"IP:{registry_ip},DNS:{PREFIX}-registry",
                     STATE / "registry.key", STATE / "registry.crt")
    for user, name in CREDENTIALS_FILES.items():
        credentials = STATE / name
        if not credentials.exists():
            fd = os.open(credentials, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                yaml.safe_dump({"username": user, "password": secrets.token_urlsafe(18)}, out)
    secrets_dir = STATE / "secrets"
    if not secrets_dir.exists():
        secrets_dir.mkdir(mode=0o700)
        for name in ("database_password", "session_key"):
            fd = os.open(secrets_dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(24) + "\n")
    # The sample router's own TLS certificate, for the name and address clients reach it by: the
    # balancer's (HTTPS passes through it as TCP). A secret of the cluster, like the others.
    balancer_ip = _node("balancer").address
    if sign_certificate(STATE, f"{PREFIX}-balancer", f"IP:{balancer_ip},DNS:{PREFIX}-balancer,DNS:localhost,IP:127.0.0.1",
                        secrets_dir / "router.key", secrets_dir / "router.crt"):
        os.chmod(secrets_dir / "router.crt", 0o600)


def sign_certificate(ca_dir: Path, name: str, alt_names: str, key: Path, certificate: Path) -> bool:
    """A new key (0600) and a certificate for ``name`` and ``alt_names``, signed by the CA in ``ca_dir``,
    unless the certificate there was made for the same names (a state made for another prefix or
    subnet gets new ones). Returns whether it made them."""
    ext = ca_dir / f"{key.stem}.ext"
    wanted = f"subjectAltName={alt_names}\n"
    if certificate.exists() and ext.exists() and ext.read_text() == wanted:
        return False
    ext.write_text(wanted)
    request = ca_dir / f"{key.stem}.csr"
    sh("openssl", "req", "-newkey", "ec", "-pkeyopt", f"ec_paramgen_curve:{CURVE}", "-nodes", "-subj", f"/CN={name}",
       "-keyout", str(key), "-out", str(request))
    os.chmod(key, 0o600)
    sh("openssl", "x509", "-req", "-in", str(request), "-CA", str(ca_dir / "ca.crt"),
       "-CAkey", str(ca_dir / "ca.key"), "-CAcreateserial", "-days", "3650", "-extfile", str(ext),
       "-out", str(certificate))
    return True


def registry_credentials(user: str = REGISTRY_USER) -> tuple:
    data = yaml.safe_load((STATE / CREDENTIALS_FILES[user]).read_text())
    return data["username"], data["password"]


# ---------------------------------------------------------------- containers

def reusable(info: dict, node: Node, image: str, config_id: str) -> bool:
    """Whether the container ``info`` (docker inspect) can stand for ``node``: same image, role,
    sandbox and address, and for a machine the same configuration. A machine prepared with another
    (another key, CA or accounts: a sandbox state made elsewhere, left in this engine) is not set
    right in place: installed, it keeps its administrator's base cloud config beside the final one,
    and the next deploy would put the other CA back. It is made afresh, as a real machine would be. Pure."""
    labels = info["Config"]["Labels"] or {}
    return info["Config"]["Image"] == image and labels.get(LABEL) == node.role and \
        labels.get(OWNER) == PREFIX and \
        info["NetworkSettings"]["Networks"].get(NETWORK, {}).get("IPAddress") == node.address and \
        (not node.is_machine or labels.get(CONFIG) == config_id)


def container_state(name: str) -> Optional[dict]:
    proc = docker("container", "inspect", name, check=False)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout)[0]


def run_container(node: Node, image: str, config_id: str) -> None:
    args = ["run", "-d", "--name", node.name, "--hostname", node.name, "--network", NETWORK,
            "--ip", node.address, "--label", f"{LABEL}={node.role}", "--label", f"{OWNER}={PREFIX}",
            "--label", f"{CONFIG}={config_id}",
            "--cap-add=ALL", "--cap-drop=SYS_RESOURCE",
            "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
            "--device-cgroup-rule=a *:* rwm", "--tmpfs", "/run", "--tmpfs", "/run/lock",
            "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--stop-signal", "SIGRTMIN+3"]
    if node.role in ("build", "machine", "spare"):
        args += ["-v", f"{node.name}-docker:/var/lib/docker"]
    if node.is_machine:
        # A reboot (`systemctl reboot`) ends the container with SIGHUP: Docker starts it again, as a
        # machine boots again. `docker stop` and `docker kill` leave it off (a machine powered off).
        args += ["--restart", REBOOTS]
    if node.role == "registry":
        args += ["-v", f"{node.name}-data:/var/lib/docker-registry"]
    if node.is_machine:
        args += ["-v", f"{database_volume(node.cluster)}:{DATABASE_MOUNT}"]
    docker(*args, image, "/lib/systemd/systemd")


def database_volume(cluster: str) -> str:
    """The volume holding a sandbox cluster's sample database (``DATABASE_MOUNT``)."""
    return f"{PREFIX}-{cluster}-database"


def ensure_network() -> None:
    if docker("network", "inspect", NETWORK, check=False).returncode != 0:
        docker("network", "create", "--subnet", f"{SUBNET}.0/24", NETWORK)


# Units that may fail in a container without making it less of a machine (no console, no tty).
HARMLESS_FAILURES = {"systemd-ask-password-wall.path", "systemd-ask-password-console.path"}


def wait_booted(node: Node, timeout: int = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # --wait: one call blocks until the boot is over (polling cost ~16 `docker exec`s per machine);
        # it answers at once, unfinished, while systemd itself is still starting.
        try:
            proc = docker("exec", node.name, "systemctl", "is-system-running", "--wait", check=False,
                          timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            break
        state = proc.stdout.strip()
        if state == "running":
            return
        if state == "degraded":
            failed = set(inside(node.name, "systemctl --failed --no-legend --plain | cut -d' ' -f1",
                                check=False).split())
            if failed - HARMLESS_FAILURES:
                raise AirError(f"sandbox: {node.name} booted degraded (failed: {sorted(failed)})")
            inside(node.name, "systemctl reset-failed")
            continue
        time.sleep(0.5)
    raise AirError(f"sandbox: {node.name} did not finish booting within {timeout} s")


# ---------------------------------------------------------------- configuring each role

ADMIN_UNIT = "admin-monitor.service"
ADMIN_FILE = "/etc/admin/monitoring.conf"


def administrators_base(base_doc: dict, admin_key: str) -> dict:
    """The base cloud config an administrator prepares the sandbox's machines with: the cluster's
    base plus things air-deploy knows nothing of (a monitoring unit, a file, another SSH key),
    which installing must keep."""
    doc = copy.deepcopy(base_doc)
    doc["ssh_authorized_keys"].append(admin_key)
    doc["write_files"].append({"path": ADMIN_FILE, "permissions": "0644",
                               "content": "# the administrator's monitoring\nserver=monitor.invalid\n"})
    doc["coreos"]["units"].append({"name": ADMIN_UNIT, "enable": True, "command": "start", "content":
                                   "[Unit]\nDescription=The administrator's monitoring (a stand-in)\n\n"
                                   "[Service]\nExecStart=/bin/sleep infinity\n\n"
                                   "[Install]\nWantedBy=multi-user.target\n"})
    return doc


def configure_common(node: Node, base_doc: dict) -> None:
    """What coreos-cloudinit does with a base cloud config: `core`'s authorized keys everywhere;
    on the machines and the build server its files; on the machines its units too, and the
    document itself where the machine keeps its cloud config. One `docker exec`."""
    files = [Put("/home/core/.ssh/authorized_keys", "\n".join(base_doc["ssh_authorized_keys"]) + "\n",
                 0o600, "core:core")]
    if node.role in ("machine", "spare", "build"):
        files += [Put(file.path, file.content, file.mode) for file in cloudconfig.files(base_doc)]
    then = []
    if node.is_machine:
        files.append(Put(node.user_data, cloudconfig.render(base_doc), 0o600))
        then.append(f"chmod 1777 {shlex.quote(DATABASE_MOUNT)}")  # the backend's uid writes there
        units = " ".join(shlex.quote(name) for name in cloudconfig.started_units(base_doc))
        if units:
            then.append(f"systemctl daemon-reload && systemctl enable -q --now {units}")
    put_files(node.name, files, " && ".join(then))


def configure_registry(node: Node) -> None:
    lines = []
    for account in CREDENTIALS_FILES:
        user, password = registry_credentials(account)
        # bcrypt at its least cost, 4 (htpasswd's default is 5): the registry checks the password
        # at every request, and bcrypt was a third of its own CPU samples over test_deploy (as
        # etcd's logins: see clusters/local.yaml). The passwords are random, 18 bytes.
        lines.append(inside(node.name, f"htpasswd -niB -C 4 {shlex.quote(user)}", input=password.encode()).strip())
    config = yaml.safe_dump({
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": "/var/lib/docker-registry"}, "delete": {"enabled": True}},
        "http": {"addr": f":{REGISTRY_PORT}",
                 "tls": {"certificate": "/etc/docker/registry/registry.crt",
                         "key": "/etc/docker/registry/registry.key"}},
        "auth": {"htpasswd": {"realm": "air-sandbox", "path": "/etc/docker/registry/htpasswd"}},
    }, sort_keys=False)
    put_files(node.name, [
        Put("/etc/docker/registry/htpasswd", "\n".join(lines) + "\n", 0o640, "root:docker-registry"),
        Put("/etc/docker/registry/registry.crt", (STATE / "registry.crt").read_text()),
        Put("/etc/docker/registry/registry.key", (STATE / "registry.key").read_text(), 0o640, "root:docker-registry"),
        Put("/etc/docker/registry/config.yml", config),
    ], "chown -R docker-registry: /var/lib/docker-registry && "
       "systemctl enable -q docker-registry && systemctl restart docker-registry && "
       "systemctl disable -q --now docker.socket docker.service containerd.service")


def configure_balancer(node: Node) -> None:
    """Only Debian's haproxy package, its own instance off: each cluster's instance is set up by
    `fab balancer.setup` (``bring_up`` calls it for every sandbox cluster, over SSH, as for a real one)."""
    inside(node.name, "systemctl disable -q --now haproxy.service docker.socket docker.service containerd.service")


def configure_build(node: Node) -> None:
    """The base image of the sample app, and its two git repositories (made again when their content changed)."""
    context = _tar_of(BASE_IMAGE_DIR)
    recipe = _content_hash(BASE_IMAGE_DIR)
    label = "{{index .Config.Labels \"air.sandbox.recipe\"}}"
    have = inside(node.name, f"docker image inspect -f '{label}' {BASE_IMAGE} 2>/dev/null || true").strip()
    if have != recipe:
        inside(node.name, f"rm -rf /tmp/air-base && mkdir /tmp/air-base && tar -x -C /tmp/air-base && "
                          f"cd /tmp/air-base && mkdir -p root/bin && cp /bin/busybox root/bin/busybox && "
                          f"for applet in $(root/bin/busybox --list); do "  # as `busybox --install -s /bin` makes them
                          f"[ -e root/bin/$applet ] || ln -s /bin/busybox root/bin/$applet; done && "
                          f"mv air-serve root/bin/air-serve && "
                          f"docker build -q --label air.sandbox.recipe={recipe} -t {BASE_IMAGE} /tmp/air-base "
                          f">/dev/null && rm -rf /tmp/air-base",
               input=context)
    image_made = recipe
    for image, image_recipe in ((ETCD_CLIENT_IMAGE, ETCD_CLIENT_RECIPE), (NGINX_IMAGE, NGINX_RECIPE)):
        image_made = hashlib.sha256((image_made + image_recipe).encode()).hexdigest()[:12]  # the images beneath's too
        have = inside(node.name, f"docker image inspect -f '{label}' {image} 2>/dev/null || true").strip()
        if have != image_made:
            inside(node.name, image_recipe + f"docker build -q --label air.sandbox.recipe={image_made} "
                                             f"-t {image} /tmp/air-image >/dev/null && rm -rf /tmp/air-image")
    repositories = [(REPOSITORY, APP_DIR, "master"), (WEBSITE_REPOSITORY, WEBSITE_DIR, WEBSITE_BRANCH)]
    made = inside(node.name, "; ".join(f"cat {path}/{RECIPE_FILE} 2>/dev/null || echo none"
                                       for path, _, _ in repositories)).split()
    for (path, directory, branch), made_from in zip(repositories, made):
        recipe = _content_hash(directory)
        if made_from == recipe:
            continue
        # Made once per content of the sample: commits added since (sandbox.change) stay until it changes.
        inside(node.name,
               f"rm -rf {path} /tmp/air-src && mkdir -p /tmp/air-src && tar -x -C /tmp/air-src && cd /tmp/air-src && "
               f"git init -q -b {branch} && git add -A && "
               f"git -c user.name=sandbox -c user.email=sandbox@air.invalid commit -q -m 'Sample Air application' && "
               f"git init -q --bare -b {branch} {path} && git push -q {path} {branch} && "
               f"echo {recipe} > {path}/{RECIPE_FILE} && rm -rf /tmp/air-src",
               input=_tar_of(directory))


def _copied_with_libraries(program: str, beneath: str = "") -> str:
    """A shell recipe's first lines: /tmp/air-image/root made with Debian's ``program`` and the
    libraries it links (but those of the program ``beneath``, already in the image below), copied
    from the build server's own root file system (the machine image has the packages): no public
    registry, and no second root file system built."""
    skip = f"$(ldd {beneath} | awk {LIBRARIES} | tr '\\n' ' ')" if beneath else ""
    return f"""\
rm -rf /tmp/air-image && mkdir -p /tmp/air-image/root{os.path.dirname(program)} && cd /tmp/air-image
cp {program} root{program}
skip=" {skip} "
for lib in $(ldd {program} | awk {LIBRARIES}); do
  case "$skip" in *" $lib "*) ;; *) cp -L --parents "$lib" root/ ;; esac
done
"""


LIBRARIES = shlex.quote('$2 == "=>" { print $3 } $1 ~ /^\\// { print $1 }')  # the paths in ldd's lines
ETCDCTL = "/usr/bin/etcdctl"

# The image of the sample components that read etcd (router, air_backend): etcd's own gRPC client
# (etcdctl, static but for libc) on the busybox base image. Workers' etcd proxy (grpc-proxy)
# speaks gRPC only, so that is what the components speak, the same on members and workers.
ETCD_CLIENT_RECIPE = _copied_with_libraries(ETCDCTL) + f"""\
printf 'FROM {BASE_IMAGE}\\nCOPY root/ /\\n' > Dockerfile
"""

# The sample router's base: Debian's nginx and its libraries on the etcd client image.
NGINX_RECIPE = _copied_with_libraries("/usr/sbin/nginx", beneath=ETCDCTL) + f"""\
mkdir -p root/etc root/var/log/nginx root/var/lib/nginx root/tmp
printf 'root:x:0:0::/:/bin/sh\\nnobody:x:65534:65534::/:/bin/false\\n' > root/etc/passwd
printf 'root:x:0:\\nnogroup:x:65534:\\n' > root/etc/group
chmod 1777 root/tmp
printf 'FROM {ETCD_CLIENT_IMAGE}\\nCOPY root/ /\\n' > Dockerfile
"""


def _content_hash(directory: Path) -> str:
    """A hash of the files' names, modes and bytes: the same in every checkout (a tar's is not:
    it carries times and owners)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(directory)}\0{path.stat().st_mode & 0o777:o}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _tar_of(directory: Path) -> bytes:
    import tarfile  # here: `fab` starting has no use for it
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(directory.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(directory)), recursive=False)
    return buffer.getvalue()


def registry_address() -> str:
    return f"{_node('registry').address}:{REGISTRY_PORT}"


def _node(role: str) -> Node:
    return next(n for n in layout(1, 0) if n.role == role)


# ---------------------------------------------------------------- the cluster file it writes

def fragment_file(cluster: str) -> Path:
    """What ``clusters/<cluster>.yaml`` includes."""
    return STATE / ("cluster.yaml" if cluster == CLUSTERS[0] else f"{cluster}.yaml")


def cluster_fragment(nodes: list, cluster: str = CLUSTERS[0]) -> dict:
    build = next(n for n in nodes if n.role == "build")
    balancer = next(n for n in nodes if n.role == "balancer")
    return {
        "ssh": {"key": str(STATE / "id_ed25519"), "known_hosts": str(STATE / "known_hosts")},
        "build": {"host": build.address, "repository": REPOSITORY},
        "registry": {"address": registry_address(), "ca": str(STATE / "ca.crt"),
                     "credentials": str(STATE / CREDENTIALS_FILES[REGISTRY_USER]),
                     "pull_credentials": str(STATE / CREDENTIALS_FILES[REGISTRY_PULL_USER])},
        "balancer": {"host": balancer.address},
        "machines": [n.address for n in nodes if n.role == "machine" and n.cluster == cluster],
        "secrets": str(STATE / "secrets"),
    }


def _running(nodes: list) -> dict:
    """container name -> whether it runs."""
    running = {}
    for n in nodes:
        info = container_state(n.name)
        running[n.name] = bool(info and info["State"]["Running"])
    return running


def status(nodes: list = None) -> dict:
    """What the sandbox is, for scripts (``fab sandbox.status --json``): ``up`` when every container
    made (``nodes``, else those the last bring-up made) runs. The second cluster's machines are
    listed whether made or not (not made: not running)."""
    state_file = STATE / "state.json"
    if nodes is None:
        if not state_file.exists():
            return {"cluster": "local", "up": False}
        nodes = [Node(**n) for n in json.loads(state_file.read_text())["nodes"]]
    every = nodes + [n for n in second_cluster_nodes() if n not in nodes]
    running = _running(every)
    pick = lambda role: next(n for n in nodes if n.role == role)
    ports = {name: _ports(name) for name in CLUSTERS}
    clusters = {name: {"port": ports[name][0], "https_port": ports[name][1], "machines": _machines_of(name, every, running)}
                for name in CLUSTERS}
    return {
        "cluster": "local",
        "up": all(running[n.name] for n in nodes),
        "ssh_key": str(STATE / "id_ed25519"),
        "known_hosts": str(STATE / "known_hosts"),
        "ca": str(STATE / "ca.crt"),
        "build": {"name": pick("build").name, "address": pick("build").address},
        "registry": {"name": pick("registry").name, "address": pick("registry").address, "port": REGISTRY_PORT},
        "balancer": {"name": pick("balancer").name, "address": pick("balancer").address,
                     "port": ports[CLUSTERS[0]][0], "https_port": ports[CLUSTERS[0]][1]},
        "machines": [{"name": n.name, "address": n.address, "spare": n.role == "spare",
                      "running": running[n.name]} for n in nodes if n.is_machine and n.cluster == CLUSTERS[0]],
        "clusters": clusters,
        "relay": relay_stats(),  # {"connections", "rtt_ms"} while the sandbox sits behind a WAN
    }


def _machines_of(cluster: str, nodes: list, running: dict) -> list:
    return [{"name": n.name, "address": n.address, "running": running[n.name]}
            for n in nodes if n.is_machine and n.cluster == cluster]


def _ports(name: str) -> tuple:
    """(http, https) ports of a sandbox cluster's frontends on the balancer, from its cluster file."""
    balancer = cluster_config.load(name).balancer
    return balancer.http_port, balancer.https_port


# ---------------------------------------------------------------- up, down, change

def prepare(node: Node, base_doc: dict, config_id: str):
    """Wait for a container to boot and configure its role, unless already done; returns its host key."""
    wait_booted(node)
    marker, key = inside(node.name, f"cat {MARKER} 2>/dev/null || true; echo; cat {HOST_KEY}").split("\n", 1)
    if marker.strip() != config_id:
        configure_common(node, base_doc)
        if node.role == "registry":
            configure_registry(node)
        elif node.role == "balancer":
            configure_balancer(node)
        elif node.role == "build":
            configure_build(node)
        put_files(node.name, [Put(MARKER, config_id + "\n")])
    elif node.role == "build":
        configure_build(node)  # checks only, fast; the repository may have been removed
    return node, key.split()[:2]


@contextmanager
def _exclusive():
    """One change to the sandbox at a time (two test runs, or a test run and a developer)."""
    STATE.mkdir(mode=0o700, parents=True, exist_ok=True)
    with machine_image.locked(STATE / ".lock"):
        yield


def bring_up(machines: int = 3, spares: int = 2, second: bool = True) -> dict:
    """Bring the sandbox to the wanted shape; reuse whatever is already right. ``second``: the
    second cluster's machines too; without it they are not made, but kept when they are there."""
    with _exclusive():
        return _bring_up(machines, spares, second)


def _bring_up(machines: int, spares: int, second: bool) -> dict:
    started = time.monotonic()
    engine_ready()
    image = ensure_image()
    ensure_local_files()
    ensure_network()
    public_key = (STATE / "id_ed25519.pub").read_text()
    config_id = _config_id(image, public_key)

    # Machines beyond the wanted number go (a smaller sandbox was asked for).
    listed = docker("ps", "-a", "--filter", f"label={OWNER}={PREFIX}", "--format", "{{.Names}}").stdout.split()
    nodes = layout(machines, spares, second or any(n.name in listed for n in second_cluster_nodes()))
    wanted = {n.name for n in nodes}
    for name in listed:
        if name not in wanted:
            remove_containers(name, volumes=True)
            docker("volume", "rm", "-f", f"{name}-docker", check=False)

    fresh: list = []
    for node in nodes:
        info = container_state(node.name)
        if info and not reusable(info, node, image, config_id):
            remove_containers(node.name)
            docker("volume", "rm", "-f", f"{node.name}-docker", f"{node.name}-data", check=False)
            info = None
        if info is None:
            run_container(node, image, config_id)
            fresh.append(node)
        elif not info["State"]["Running"]:
            docker("start", node.name)

    for name in CLUSTERS:  # every cluster's machines, made or not: their addresses are fixed
        fragment_file(name).write_text(
            f"# Written by `fab sandbox.up`; clusters/{name}.yaml includes it.\n" +
            yaml.safe_dump(cluster_fragment(layout(machines, spares), name), sort_keys=False))
    base_doc = base_document()
    keys = parallel(lambda n: prepare(n, base_doc, config_id), nodes, describe=lambda n: n.name)
    _write_atomically(STATE / "known_hosts", "".join(f"{n.address} {k[0]} {k[1]}\n" for n, k in keys))
    (STATE / "state.json").write_text(json.dumps({"nodes": [n.__dict__ for n in nodes]}, indent=1))
    from tasks.net.executor import Executor
    from tasks.runbooks import balancer  # each cluster's own haproxy instance, as `fab balancer.setup` makes it
    for name in CLUSTERS:
        with Executor(cluster_config.load(name)) as ex:
            balancer.setup(ex)
    set_rtt(wanted_rtt())
    say(f"sandbox: up in {time.monotonic() - started:.1f} s "
        f"({machines} machines, {spares} spares; {len(fresh)} containers created)")
    return status(nodes)


def base_document() -> dict:
    """What the sandbox's machines are prepared with: the `local` cluster's base cloud config
    as its administrator extended it (``administrators_base``)."""
    from tasks.commands.machine import base_document as render
    admin_key = (STATE / "admin_ed25519.pub").read_text().strip()
    return administrators_base(render(cluster_config.load("local")), admin_key)


def _write_atomically(path: Path, text: str) -> None:
    """Readers (another test run's SSH connections) see the old file or the new one, never half."""
    partial = path.with_name(path.name + ".new")
    partial.write_text(text)
    partial.replace(path)


def _config_id(image: str, public_key: str) -> str:
    accounts = " ".join(CREDENTIALS_FILES)  # the registry's accounts and the machines' login follow them
    return hashlib.sha256((image + public_key + (STATE / "ca.crt").read_text() + accounts + DATABASE_MOUNT)
                          .encode()).hexdigest()[:12]


# ---------------------------------------------------------------- a WAN (sandbox/relay.py)

RTT_VARIABLE = "AIR_SANDBOX_RTT_MS"
RELAY_PORTS = 47000  # plus the subnet's third octet: each sandbox its own relay


def wanted_rtt() -> float:
    """The RTT asked for between this machine and the sandbox (``AIR_SANDBOX_RTT_MS``), in ms."""
    text = os.environ.get(RTT_VARIABLE, "0") or "0"
    try:
        rtt = float(text)
    except ValueError:
        raise ConfigError(f"{RTT_VARIABLE}={text!r}: not a number of milliseconds") from None
    if not 0 <= rtt <= 2000:
        raise ConfigError(f"{RTT_VARIABLE}={text!r}: from 0 to 2000 ms")
    return rtt


def relay_rule(port: int) -> list:
    """iptables arguments (after -I/-D) of the rule sending this machine's TCP connections to the
    sandbox's subnet through its relay; the relay's own (marked) are left alone. Pure."""
    from sandbox.relay import MARK
    return ["OUTPUT", "-t", "nat", "-d", f"{SUBNET}.0/24", "-p", "tcp", "-m", "mark", "!", "--mark", hex(MARK),
            "-m", "comment", "--comment", f"{PREFIX} relay", "-j", "REDIRECT", "--to-ports", str(port)]


def relay_stats() -> Optional[dict]:
    """What the relay says of itself (connections relayed, RTT), or None when none runs."""
    try:
        return json.loads((STATE / "relay.json").read_text()) if (STATE / "relay.pid").exists() else None
    except (OSError, ValueError):
        return None


def set_rtt(rtt_ms: float) -> None:
    """Put the sandbox ``rtt_ms`` away from this machine (0: directly reachable again): the relay
    is (re)started and the redirect rule set, or both removed. Connections already open keep the
    way they were opened on."""
    port = RELAY_PORTS + int(SUBNET.split(".")[2])
    while sh("iptables", "-w", "-D", *relay_rule(port), check=False).returncode == 0:  # -w: another's change waited for
        pass
    pid_file = STATE / "relay.pid"
    if pid_file.exists():
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGTERM)
        except (ProcessLookupError, ValueError):
            pass
        pid_file.unlink()
    if not rtt_ms:
        return
    stats = STATE / "relay.json"
    stats.unlink(missing_ok=True)
    with open(STATE / "relay.log", "ab") as log:
        relay = subprocess.Popen([sys.executable, "-m", "sandbox.relay", "--port", str(port), "--rtt-ms", str(rtt_ms),
                                  "--stats", str(stats)], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                 start_new_session=True)
    pid_file.write_text(str(relay.pid))
    for _ in range(100):
        if stats.exists() or relay.poll() is not None:
            break
        time.sleep(0.05)
    if not stats.exists():
        raise AirError(f"sandbox: the latency relay did not start (see {STATE / 'relay.log'})")
    sh("iptables", "-w", "-I", *relay_rule(port))
    say(f"sandbox: {rtt_ms:g} ms RTT between this machine and the sandbox (relay on 127.0.0.1:{port})")


def reset_machines(addresses) -> None:
    """Make these machines freshly prepared again: new containers and engine volumes, same addresses."""
    with _exclusive():
        _reset_machines(addresses)


def _reset_machines(addresses) -> None:
    state = json.loads((STATE / "state.json").read_text())
    nodes = [Node(**n) for n in state["nodes"] if n["address"] in set(addresses) and n["role"] in ("machine", "spare")]
    image = ensure_image()
    config_id = _config_id(image, (STATE / "id_ed25519.pub").read_text())
    base_doc = base_document()

    def renew(node):
        remove_containers(node.name)
        docker("volume", "rm", "-f", f"{node.name}-docker", check=False)
        run_container(node, image, config_id)
        return node, prepare(node, base_doc, config_id)[1]

    renewed = dict(parallel(renew, nodes, describe=lambda n: n.name))
    known = [line for line in (STATE / "known_hosts").read_text().splitlines()
             if line.split()[0] not in {n.address for n in nodes}]
    known += [f"{n.address} {k[0]} {k[1]}" for n, k in renewed.items()]
    _write_atomically(STATE / "known_hosts", "\n".join(known) + "\n")


def owned_volume(name: str) -> bool:
    """Whether volume ``name`` is one of this sandbox's containers' (not another sandbox's whose
    prefix merely starts with ours: ``air-sandbox-w1``, a test run's worker, beside ``air-sandbox``). Pure."""
    node = rf"(build|registry|balancer|m\d+|{CLUSTERS[1]}-m\d+)"
    return re.fullmatch(rf"{re.escape(PREFIX)}-{node}-(docker|data)", name) is not None or \
        name in {database_volume(c) for c in CLUSTERS}


def tear_down() -> None:
    """Remove every sandbox container, volume and the network; the machine image stays cached."""
    with _exclusive():
        _tear_down()


def _tear_down() -> None:
    set_rtt(0)
    listed = docker("ps", "-a", "--filter", f"label={OWNER}={PREFIX}", "--format", "{{.Names}}").stdout.split()
    if listed:
        remove_containers(*listed, volumes=True)
    volumes = [v for v in docker("volume", "ls", "-q", "--filter", f"name={PREFIX}-").stdout.split() if owned_volume(v)]
    if volumes:
        docker("volume", "rm", "-f", *volumes)
    remove_network()
    for name in ("state.json", "known_hosts"):
        (STATE / name).unlink(missing_ok=True)
    for name in CLUSTERS:
        fragment_file(name).unlink(missing_ok=True)


def remove_network() -> None:
    """The sandbox's network removed, if there is one. dockerd (20.10 here) can keep an endpoint of a
    container removed meanwhile, and then refuses: "has active endpoints", none attached (seen once
    in some fifty CI runs; only dockerd's restart forgets it). Then the network is left as it is,
    with a warning: the next bring-up uses it, new containers attach to it as to a new one."""
    if docker("network", "inspect", NETWORK, check=False).returncode != 0:
        return
    removed = docker("network", "rm", NETWORK, check=False)
    if removed.returncode == 0:
        return
    attached = docker("network", "inspect", NETWORK, "--format", "{{len .Containers}}", check=False).stdout.strip()
    if "has active endpoints" in removed.stderr and attached == "0":
        say(f"sandbox: warning: dockerd keeps an endpoint of a removed container on network {NETWORK}, which "
            f"stays (restarting dockerd lets it go); the next bring-up uses it")
        return
    raise AirError(f"sandbox: `docker network rm {NETWORK}` failed: {removed.stderr.strip().splitlines()[0]}")


# ---------------------------------------------------------------- changes to the sample application

FAILURES = ("prepare", "build", "hang")
HANG = 3600  # s: the Dockerfile step of `--fails hang` (a build cut off by its deadline or a lost channel)
FIXED = ("broken", "slow-start", "errors", "latency-ms")  # the files of a component that `--fix` removes
# The kinds of change, each with what its value is (None: it takes none). They exclude each other.
CHANGE_KINDS = {"change": None, "broken": None, "fix": None, "slow-start": "whole seconds",
                "version": "MAJOR.MINOR", "fails": "|".join(FAILURES), "file": "a file of the component's folder",
                "errors": "a percentage", "latency-ms": "whole milliseconds"}
FAULTY = "router"  # the component whose answers can be made bad (--errors, --latency-ms): the one the balancer reaches
PERCENT = re.compile(r"(100|[0-9]{1,2})(\.[0-9]{1,2})?")


@frozen
class Change:
    """One change to the sample application, checked when it is made.

    ``kind``: ``change`` adds a line to the component's index.html; ``broken`` ships a file
    ``broken`` (its health check fails); ``fix`` is a change that also removes ``broken`` and
    ``slow-start``; ``slow-start`` ships a file ``slow-start`` (its health check fails ``value`` s
    after each start); ``version`` sets the application's VERSION to ``value``; ``fails`` makes the
    component's ``value`` step fail (``prepare``: air_backend's prepare command, ``build``: a
    Dockerfile step); ``file`` adds a line to ``value``, a file of the component's folder;
    ``errors`` makes the router answer ``value`` percent of requests 500 (its file ``errors``),
    ``latency-ms`` slows every request it answers by ``value`` ms (its file ``latency-ms``). The
    change goes to the repository the component is built from (``static_website``: the second
    one, on ``develop`` unless ``branch`` is given; the others: the main one, on ``master``).
    """
    component: str
    kind: str = "change"
    value: Optional[str] = None
    branch: str = ""  # empty: the component's repository's own branch

    def __post_init__(self):
        if not self.branch:
            object.__setattr__(self, "branch", WEBSITE_BRANCH if self.website else "master")
        problem = _change_problem(self)
        if problem:
            raise ConfigError(f"sandbox.change: {problem}")

    @property
    def website(self) -> bool:
        return self.component == WEBSITE

    @property
    def folder(self) -> str:
        """The component's folder in its repository."""
        return "." if self.website else f"components/{self.component}"


def _change_problem(change: Change) -> Optional[str]:
    """What is wrong with ``change``, or None."""
    components = {p.name for p in (APP_DIR / "components").iterdir()} | {WEBSITE}
    if change.component not in components:
        return f"no component {change.component!r} in the sample application"
    if not cluster_config.CLUSTER_NAME.fullmatch(change.branch.replace("-", "_").replace("/", "_")):
        return f"branch {change.branch!r} is not a simple branch name"
    if change.kind not in CHANGE_KINDS:
        return f"no kind of change {change.kind!r} (one of {', '.join(CHANGE_KINDS)})"
    if (change.value is None) != (CHANGE_KINDS[change.kind] is None):
        wanted = CHANGE_KINDS[change.kind]
        return f"--{change.kind} takes {wanted}" if wanted else f"--{change.kind} takes no value"
    check = _VALUE_CHECKS.get(change.kind)
    return check(change) if check else None


_VALUE_CHECKS = {
    "slow-start": lambda c: None if c.value.isdigit() else "--slow-start takes whole seconds",
    "errors": lambda c: _faulty(c) or (None if PERCENT.fullmatch(c.value) and 0 < float(c.value) <= 100
                                       else "--errors takes a percentage, more than 0 and at most 100"),
    "latency-ms": lambda c: _faulty(c) or (None if c.value.isdigit() and 0 < int(c.value) <= 60000
                                           else "--latency-ms takes whole milliseconds, 1 to 60000"),
    "version": lambda c: f"VERSION is in the main repository, not in {c.component}'s" if c.website else None,
    "fails": lambda c: f"--fails must be one of {', '.join(FAILURES)}" if c.value not in FAILURES else
    "only air_backend has a prepare command" if c.value == "prepare" and c.component != "air_backend" else None,
    "file": lambda c: None if cluster_config.REMOTE_PATH.fullmatch("/" + c.value) and ".." not in c.value.split("/")
    else f"--file {c.value!r} is not a path inside the component's folder",
}


# The release command's changes (air_backend's bin/migrate): ``schema`` N makes the release need the
# database at schema N (0: none), its health failing until the migration ran; ``migration`` `fails`
# ships a file that makes the migration fail, `passes` removes it.
MIGRATIONS = ("fails", "passes")
CHANGE_KINDS.update({"schema": "a whole number", "migration": "|".join(MIGRATIONS)})
_VALUE_CHECKS.update({
    "schema": lambda c: None if c.value.isdigit() else "--schema takes a whole number",
    "migration": lambda c: f"--migration must be one of {', '.join(MIGRATIONS)}" if c.value not in MIGRATIONS else
    "only air_backend has a migration" if c.component != "air_backend" else None,
})


def _faulty(change: Change) -> Optional[str]:
    return None if change.component == FAULTY else f"only the {FAULTY} answers badly on purpose (--{change.kind})"


def _appended(path: str) -> str:
    return f"date +%s%N >> {shlex.quote(path)}"


_FAILING_STEP = {"build": "exit 3", "hang": f"sleep {HANG}"}
# kind -> (the shell edit in the checkout, the commit message), from the change.
_EDITS = {
    "change": lambda c: (_appended(f"{c.folder}/index.html"), f"change {c.component}"),
    "file": lambda c: (_appended(f"{c.folder}/{c.value}"), f"change {c.component}"),
    "broken": lambda c: (_appended(f"{c.folder}/broken"), f"break {c.component}"),
    "fix": lambda c: ("rm -f " + " ".join(shlex.quote(f"{c.folder}/{name}") for name in FIXED) + "; "
                      + _appended(f"{c.folder}/index.html"), f"fix {c.component}"),
    # each also a change of its index.html: made twice, it is still a new commit (a new release)
    "errors": lambda c: (f"printf '%s\\n' {shlex.quote(c.value)} > {shlex.quote(c.folder + '/errors')}; "
                         + _appended(f"{c.folder}/index.html"), f"{c.component} answers {c.value}% of requests 500"),
    "latency-ms": lambda c: (f"printf '%s\\n' {int(c.value)} > {shlex.quote(c.folder + '/latency-ms')}; "
                             + _appended(f"{c.folder}/index.html"), f"{c.component} answers {c.value} ms slower"),
    "slow-start": lambda c: (f"printf '%s\\n' {int(c.value)} > {shlex.quote(c.folder + '/slow-start')}",
                             f"{c.component} starts in {c.value} s"),
    "version": lambda c: (f"printf '%s\\n' {shlex.quote(c.value)} > VERSION", f"VERSION {c.value}"),
    # prepare: a script its prepare command refuses (sh -n); build: a failing Dockerfile step; hang: one
    # that runs for an hour without a word
    "fails": lambda c: ((f"printf 'if then\\n' > {shlex.quote(c.folder + '/bin/unfinished')}" if c.value == "prepare"
                         else f"printf 'RUN echo compiling {c.component} && {_FAILING_STEP[c.value]}\\n' >> "
                              f"{shlex.quote(c.folder + '/Dockerfile')}"), f"{c.value} fails for {c.component}"),
}


_EDITS.update({
    "schema": lambda c: ((f"printf '%s\\n' {int(c.value)} > {shlex.quote(c.folder + '/schema')}" if int(c.value) else
                          f"rm -f {shlex.quote(c.folder + '/schema')}") + "; " + _appended(f"{c.folder}/index.html"),
                         f"{c.component} needs schema {int(c.value)}"),
    "migration": lambda c: ((_appended(f"{c.folder}/migration-fails") if c.value == "fails" else
                             f"rm -f {shlex.quote(c.folder + '/migration-fails')}; " +
                             _appended(f"{c.folder}/index.html")), f"the migration of {c.component} {c.value}"),
})


def change_script(change: Change) -> str:
    """The script, run on the build server, that commits ``change`` and prints the new commit. Pure."""
    edit, what = _EDITS[change.kind](change)
    repository = WEBSITE_REPOSITORY if change.website else REPOSITORY
    branch = shlex.quote(change.branch)
    return f"""
        rm -rf /tmp/air-change && git clone -q {repository} /tmp/air-change && cd /tmp/air-change
        git checkout -q {branch} 2>/dev/null || git checkout -q -b {branch}
        {edit}
        git add -A && git -c user.name=sandbox -c user.email=sandbox@air.invalid commit -q -m {shlex.quote(what)}
        git push -q origin {branch} && git rev-parse HEAD && rm -rf /tmp/air-change
    """


def commit_change(change: Change) -> str:
    """Commit ``change`` to the sample application on the build server; return the new commit."""
    return inside(_node("build").name, change_script(change)).strip()


def change_of(component: str, branch: Optional[str] = None, **flags) -> Change:
    """The Change `fab sandbox.change` asks for: at most one of its kind flags (``broken``, ``fix``,
    ``slow_start``, ``version``, ``fails``, ``file``, ``errors``, ``latency_ms``) set; none is a plain change."""
    given = [(name.replace("_", "-"), value) for name, value in flags.items() if value is not None and value is not False]
    if len(given) > 1:
        raise ConfigError(f"sandbox.change: {' and '.join('--' + kind for kind, _ in given)} exclude each other")
    kind, value = given[0] if given else ("change", True)
    return Change(component, kind, None if value is True else str(value), branch or "")


# ---------------------------------------------------------------- the tasks

@air_task(help={"machines": "machines in the cluster (default 3)",
                "spares": "extra machines, prepared but not in the cluster, for add-machine (default 2)",
                "second": "the second cluster's machines too (default); --no-second: not made, kept if there"})
def up(c, machines=3, spares=2, second=True):
    """Bring up the sandbox (the `local` cluster and the second's machines); reuses what is already running."""
    bring_up(int(machines), int(spares), second)


@air_task
def down(c):
    """Remove the sandbox's containers, volumes and network (the machine image stays cached)."""
    tear_down()


@air_task(name="status", help={"json": "print JSON for scripts"})
def show_status(c, json_=False):
    """Show the sandbox's machines and services."""
    info = status()
    if json_:
        print(json.dumps(info, indent=1))
        return
    if not info.get("machines"):
        print("sandbox: not up (fab sandbox.up)")
        return
    for role in ("build", "registry", "balancer"):
        print(f"{role:9} {info[role]['name']:22} {info[role]['address']}")
    for m in info["machines"]:
        kind = "spare" if m["spare"] else "machine"
        print(f"{kind:9} {m['name']:22} {m['address']}  {'running' if m['running'] else 'stopped'}")


@air_task(help={"component": "component of the sample application to change",
                "broken": "a change that builds but never becomes healthy",
                "branch": "branch to commit to, made if missing (default: master; develop for static_website)",
                "version": "instead, set the application's VERSION (MAJOR.MINOR)",
                "fix": "a normal change that also removes the component's `broken` and `slow-start` files",
                "file": "file of the component's folder to change (default index.html)",
                "fails": "a change whose `prepare` (air_backend) or `build` fails, or whose build `hang`s (an hour-long step)",
                "slow-start": "the component's health check fails for this many seconds after each start",
                "schema": "air_backend: the release needs the database at this schema (0: none) to be healthy",
                "migration": "air_backend: its release command (bin/migrate) fails, or passes again",
                "errors": "the router answers this percentage of requests 500 (not its health checks)",
                "latency-ms": "the router answers every request this many milliseconds later"})
def change(c, component="router", broken=False, branch=None, version=None, fix=False, file=None, fails=None,
           slow_start=None, schema=None, migration=None, errors=None, latency_ms=None):
    """Commit a change to the sample application's repositories on the build server."""
    print(commit_change(change_of(component, branch, broken=broken, fix=fix, slow_start=slow_start, version=version,
                                  fails=fails, file=file, schema=schema, migration=migration, errors=errors,
                                  latency_ms=latency_ms)))


def next_os_version(version: str) -> str:
    """The version after ``version``: its last number one higher (4081.2.0 -> 4081.2.1). Pure."""
    head, _, last = version.rpartition(".")
    if not last.isdigit():
        raise ConfigError(f"sandbox.os-update: the machine's OS version {version!r} does not end in a number: "
                          f"give --version")
    return f"{head}{'.' if head else ''}{int(last) + 1}"


def stage_os_update(addresses, version: Optional[str] = None) -> dict:
    """Stage an OS update on the sandbox machines at ``addresses``, as update-engine would have
    downloaded it (``version``, default each machine's next); returns address -> version staged.
    The machine boots it at its next reboot."""
    from tasks.commands import os_update
    if version is not None and not os_update.OS_VERSION.fullmatch(version):
        raise ConfigError(f"sandbox.os-update: --version: expected a version such as 4081.2.1, got {version!r}")
    nodes = {n["address"]: Node(**n) for n in json.loads((STATE / "state.json").read_text())["nodes"]} \
        if (STATE / "state.json").exists() else {}
    unknown = [a for a in addresses if a not in nodes or not nodes[a].is_machine]
    if unknown:
        raise ConfigError(f"sandbox.os-update: not a sandbox machine: {', '.join(unknown)}")

    def one(address):
        node = nodes[address]
        wanted = version or next_os_version(inside(node.name, os_update.os_version_command()).strip())
        inside(node.name, f"{OS_STAGE} {shlex.quote(wanted)}")
        return wanted
    return dict(zip(addresses, parallel(one, list(addresses))))


@air_task(name="os-update", help={"machines": "machines to stage it on, comma-separated (default: the `local` "
                                              "cluster's)",
                                  "version": "the OS version staged (default: each machine's next, "
                                             "4081.2.0 -> 4081.2.1)"})
def os_update(c, machines=None, version=None):
    """Stage an OS update on sandbox machines, as update-engine does; their next reboot boots it."""
    addresses = [a.strip() for a in machines.split(",") if a.strip()] if machines else \
        list(cluster_config.load(CLUSTERS[0]).machines)
    for address, staged in stage_os_update(addresses, version).items():
        print(f"{address}: update staged: {staged}")


@air_task(name="deploy", help={"branch": "branch of the sample application (default: master)"})
def deploy_sample(c, branch="master"):
    """Deploy the sample application to the sandbox's clusters (local, local2): setup-cluster the
    first time, deploy afterwards; one cluster after the other."""
    for name in CLUSTERS:
        deploy_one(cluster_config.load(name), branch)


def deploy_one(target, branch: str = "master") -> None:
    from tasks.net.session import optional_lock, session
    from tasks.runbooks import deploy as deploying
    from tasks.runbooks import install
    from tasks.runbooks.etcd_auth import ensure_root
    from tasks.runbooks.publish import publish
    branch = build_scripts.check_branch(branch)
    ensure_root(target)  # a fresh sandbox has no root login yet, and reaching etcd (or finding none) needs it
    with session(target, etcd=False, changes=True) as s:
        optional_lock(s, f"sandbox.deploy {branch}")
        if s.has_etcd and records.read_release(s.etcd, target)[0] is not None:
            deploying.deploy_release(s, target.build.host, branch)
            return
        publish(s.ex, target.build.host, branch)
    with session(target, etcd=False, changes=True) as s:
        install.setup(s, list(target.machines))
