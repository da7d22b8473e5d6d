"""Target clusters: the YAML files in ``clusters/`` and their validation.

This module owns what a cluster file may say. ``SCHEMA`` is the single
description of every field: it validates the files (``load``) and it writes
``clusters/README.md`` (``python -m tasks.model.cluster --readme``), so the two
cannot drift apart. Loading is pure file reading: nothing is contacted, and
any problem is one ``ConfigError`` line naming the file, the field and what
was expected.
"""
from __future__ import annotations

import ipaddress
import math
import os
import re
import shlex
import sys
from dataclasses import field, replace
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional, Union

import yaml

from tasks.model.errors import ConfigError
from tasks.model.frozen import frozen
from tasks.model.state import MAINTENANCE as MAINTENANCE_READ
from tasks.model.state import SETTINGS as SETTINGS_READ

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # tasks/model/cluster.py -> the checkout
CLUSTERS_VARIABLE = "AIR_CLUSTERS_DIR"  # where the cluster files are, when not in the checkout's clusters/
# Every pattern below is used with fullmatch: match with $ would take "name\n" for "name".
CLUSTER_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
COMPONENT_NAME = CLUSTER_NAME
DOCKER_NAMESPACE = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*")
REMOTE_PATH = re.compile(r"/[A-Za-z0-9._/@+-]*")
URL_PATH = re.compile(r"/[A-Za-z0-9._~/?=&%+-]*")
UNIT_NAME = re.compile(r"[A-Za-z0-9@._:-]+\.(service|timer|socket|path|mount)")
FILE_MODE = re.compile(r"0?[0-7]{3}")
BRANCH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")
BUILD_ARG = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")
STAGE = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,62}")
# What a build argument's value may name in braces; build.py gives the values.
BUILD_ARG_VALUES = ("version", "commit", "branch", "cluster", "component")
SECRET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")
SETTING_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*")
MAX_UID = 2 ** 31 - 1
# Ceilings of the whole-number kinds: a value past them is a typo, and a huge one overflows what it reaches
# (a socket timeout, an etcd lease, a sleep).
MAX_SECONDS, MAX_COUNT = 86400, 1000
PORT = re.compile(r"[0-9]{1,5}")  # ASCII digits: str.isdigit takes '²' and '٥' too
SCOPE_ID = re.compile(r"[A-Za-z0-9_.-]{1,15}")  # an interface's name or index, as ip(8) and ssh write it
MACHINE = "an IPv4 or IPv6 address of a machine (not unspecified, loopback or multicast)"
# C0, DEL and C1: what a terminal, a unit file or a shell line may read as something else than text.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Files of the etcd logins (tasks.model.etcd_access): the root's in the secrets folder, a component's
# password in its own secrets folder on the machines. No component secret may be called so.
ETCD_ROOT_FILE, ETCD_PASSWORD_FILE = "etcd-root.yaml", "etcd-password"
RESERVED_SECRETS = (ETCD_ROOT_FILE, ETCD_PASSWORD_FILE)


# ---------------------------------------------------------------- the schema

@frozen
class Field:
    kind: str
    doc: str
    default: Any = None
    required: bool = True


@frozen
class Section:
    doc: str
    fields: dict
    many: bool = False  # a list of such sections
    required: bool = True


ETCD_BCRYPT_COST = 10  # etcd's own default (a drop-in names another one only)
BCRYPT_COSTS = (4, 31)  # the costs etcd takes

KINDS = {
    "text": "a non-empty string",
    "line": "a non-empty string on one line (no control characters)",
    "command": "a command on one line (no control characters), its quotes balanced",
    "unit_text": "a non-empty text (no control characters but newline and tab)",
    "name": "a lower-case name: a letter, then letters, digits or _",
    "namespace": "a Docker repository namespace (lower-case letters, digits, . _ -)",
    "seconds": f"a whole number of seconds, from 1 to {MAX_SECONDS} (a day)",
    "count": f"a whole number from 1 to {MAX_COUNT}",
    "port": "a TCP port (1 to 65535)",
    "address": "an IPv4 or IPv6 address",
    "addresses": "a non-empty list of distinct IPv4 or IPv6 addresses",
    "hosts": "a list of IP addresses or DNS names",
    "host": "an IP address or a DNS name",
    "hostport": "HOST:PORT",
    "local_path": "a path on this machine (relative to the cluster file; ~ allowed)",
    "remote_path": "an absolute path on the remote host (letters, digits, . _ / @ + -)",
    "url_path": "an HTTP path starting with / (letters, digits, . _ ~ / ? = & % + -)",
    "unit": "a systemd unit name (letters, digits, @ . _ : -, ending in .service, .timer, .socket, .path, .mount)",
    "mode": "an octal file mode, e.g. '0644'",
    "repo_path": "a relative path inside the source checkout (no .., no leading /; `.` is its root)",
    "branch": "a git branch name (letters, digits, . _ - /; no `..`)",
    "stage": "a Dockerfile stage name (a letter, then letters, digits, . _ -)",
    "build_args": "a mapping of build-argument names (letters, digits, _) to strings; "
                  + ", ".join(f"`{{{v}}}`" for v in BUILD_ARG_VALUES) + " in a value are replaced",
    "proxy_protocol": "v1 or v2 (the PROXY protocol's text or binary version)",
    "http_status": "an HTTP status code (100 to 599)",
    "check": "`http` (the health path must answer) or `tcp` (the port must accept a connection)",
    "signal": "a signal name such as SIGTERM, SIGQUIT, SIGINT",
    "secret_names": "a list of distinct file names of the secrets folder (letters, digits, . _ -)",
    "uid": "a numeric user id (0 to 2147483647)",
    "flag": "true or false",
    "percent": "a number of percent, more than 0 and at most 100",
    "ratio": "a number from 1 to 1000",
    "unavailable": f"a number of machines (1 to {MAX_COUNT}) or a percent of the machines (`25%`: 1% to 100%)",
    "budget": f"a whole number from 0 to {MAX_COUNT}",
    "milliseconds": "a whole number of milliseconds, from 1 to 600000",
    "bcrypt_cost": f"a whole number from {BCRYPT_COSTS[0]} to {BCRYPT_COSTS[1]} (etcd's bcrypt cost)",
    "etcd_reads": "a list of the application's keys the component reads: `maintenance`, `settings/<key>` "
                  "(a key of `settings`), or `settings/<prefix>/` (every setting below it; none of them a secret)",
    "settings": "a mapping of keys (words of letters, digits, . _ - joined by /) to a text or number, "
                "or to `{secret: NAME}`: the content of file NAME of the secrets folder",
}

HEALTH_CHECKS = ("http", "tcp")
SIGNAL = re.compile(r"SIG[A-Z0-9]{2,8}")

SCHEMA = Section("A target cluster: one YAML file per cluster, named <cluster>.yaml.", {
    "include": Field("local_path", "Another YAML file whose fields this file's own fields complete "
                     "(the sandbox writes one for the `local` cluster).", required=False),
    "namespace": Field("namespace", "Docker namespace of the images: <namespace>/<cluster>_<component>."),
    "ssh": Section("How air-deploy logs in to every host of the cluster.", {
        "user": Field("text", "Login user; commands are run through `sudo -n` unless it is root.", "core"),
        "port": Field("port", "SSH port.", 22),
        "key": Field("local_path", "Private key file."),
        "known_hosts": Field("local_path", "known_hosts file; a host whose key is not in it is refused."),
        "gateway": Field("host", "A host every other connection goes through (a jump host, e.g. the build "
                         "server, when the machines sit on a private network): SSH, the etcd tunnel, the Docker "
                         "API and the registry's API. Its host key is checked like every other; ~/.ssh/config "
                         "is never read.", required=False),
    }),
    "build": Section("The build server, where images are built and pushed.", {
        "host": Field("host", "Address of the build server (`fab -H` overrides it)."),
        "repository": Field("text", "Git URL of the Air source, as the build server reaches it."),
        "checkout": Field("remote_path", "This cluster's own source checkout on the build server.",
                          "/aircloak/{cluster}/air"),
        "branch": Field("text", "Branch deployed when none is given.", "master"),
    }),
    "registry": Section("The Docker registry holding the cluster's images.", {
        "address": Field("hostport", "Registry address, as machines and the build server reach it."),
        "ca": Field("local_path", "CA certificate the registry's TLS certificate is signed by "
                    "(omit for a publicly trusted one).", required=False),
        "credentials": Field("local_path", "YAML file with `username` and `password` "
                             "(must not be readable by group or others): the account that pushes."),
        "pull_credentials": Field("local_path", "The same for a pull-only account: machines get this one, and the "
                                  "push account stays on this side. Default: `credentials`.", required=False),
        "token_hosts": Field("hosts", "Hosts besides the registry's own to which credentials may go when the "
                             "registry names a token service there (always over https).", required=False),
        "keep": Field("count", "Releases of the history whose images stay on every machine beside the current "
                      "one (so rollbacks need no pull); older images of the cluster are removed.", 3),
    }),
    "balancer": Section("The TCP load balancer (haproxy) in front of the machines. One host may serve several "
                        "clusters: each has its own frontends, files and haproxy instance there.", {
        "host": Field("host", "Address of the balancer host (reached over SSH)."),
        "bind": Field("address", "Address this cluster's frontends listen on (default: every address of the host).",
                      required=False),
        "http_port": Field("port", "Port of this cluster's HTTP frontend (passed through as TCP).", 80),
        "https_port": Field("port", "Port of this cluster's HTTPS frontend (passed through as TCP; used when the "
                            "component below serves HTTPS).", 443),
        "component": Field("name", "Component the balancer sends traffic to (default: the first one).",
                           required=False),
        "tunnel": Field("seconds", "haproxy's `timeout tunnel`: how long an established connection (a websocket, "
                        "a long download) may stay idle, in seconds.", 3600),
        "folder": Field("remote_path", "This cluster's own files on the balancer host (haproxy.cfg, routers.cfg); "
                        "written by air-deploy only.", "/etc/haproxy/air/{cluster}"),
    }),
    "machines": Field("addresses", "The machines of the cluster, by address: none "
                      "unspecified, loopback or multicast; ::ffff:A is the machine A. An IPv6 scope id is an "
                      "interface's name or index."),
    "components": Section("The Air components, each a Docker container under systemd on every machine.", {
        "name": Field("name", "Component name; the image is <namespace>/<cluster>_<name>."),
        "port": Field("port", "Port the component listens on (host network)."),
        "health": Field("url_path", "HTTP path the health check asks (with `check: http`).", "/health"),
        "health_status": Field("http_status", "HTTP status the health path answers when the component is healthy.",
                               200),
        "health_body": Field("line", "Text the health path's answer must contain (none: any body).", required=False),
        "check": Field("check", "How the health check asks: over HTTP, or only whether the port accepts a "
                       "TCP connection (a component without HTTP).", "http"),
        "stop_signal": Field("signal", "Signal `docker stop` sends the container to stop it politely "
                             "(nginx: SIGQUIT); after `timeouts.stop` seconds it is killed.", "SIGTERM"),
        "stop_command": Field("line", "Command run in the container (through `sh -c`) to stop it politely, "
                              "before the stop signal is sent.", required=False),
        "secrets": Field("secret_names", "Files of the secrets folder this component gets: on every machine "
                         "they are kept in a folder of its own, readable by its `user` only, and that folder "
                         "alone is mounted read-only at /air/secrets in its container (none: no secrets).",
                         required=False),
        "reads": Field("etcd_reads", "What the component reads from the cluster's etcd, below "
                       "/air/<cluster>/app/. With `etcd_auth` it gets a login of its own allowed to read that "
                       "and nothing else (a setting that is a secret only when named here by its own key): "
                       "its user name in the container's AIR_ETCD_USER, its password in the file "
                       "AIR_ETCD_PASSWORD_FILE (in /air/secrets, readable by its `user` only). "
                       "None: no login, and etcd refuses it everything.", required=False),
        "user": Field("uid", "User id the component's container runs as (`docker run --user` unless 0); "
                      "its secrets and its data folder belong to it.", 0),
        "source": Field("repo_path", "Build context: the folder of the component's checkout sent to the build "
                        "(`.` for the checkout's root); default components/<name>.", required=False),
        "dockerfile": Field("repo_path", "Dockerfile, as a path in the checkout inside the build context; "
                            "default <source>/Dockerfile.", required=False),
        "ignore": Field("repo_path", "Ignore file (`.dockerignore` rules), as a path in the checkout inside the "
                        "build context; what it excludes is not sent to the build (the Dockerfile always is). "
                        "Default: <dockerfile>.dockerignore, "
                        "else .dockerignore at the root of the context, when there is one.", required=False),
        "args": Field("build_args", "Build arguments (`ARG` in the Dockerfile). `{version}` is MAJOR.MINOR of the "
                      "main checkout's VERSION, `{commit}` and `{branch}` those of the component's checkout, "
                      "`{cluster}` and `{component}` the names (quote such a value in YAML); a value that changes "
                      "with every commit makes every commit a new image.", required=False),
        "target": Field("stage", "Stage of a multi-stage Dockerfile to build; default its last stage.", required=False),
        "prepare": Field("line", "Shell command run in the root of the component's checkout before its build "
                         "(generated files); its output is shown prefixed by the component's name; "
                         "a non-zero exit fails the build.", required=False),
        "prepare_timeout": Field("seconds", "Seconds the prepare command may take before it is stopped (a failure).",
                                 300),
        "repository": Field("text", "Git URL of the component's own repository (as the build server reaches it); "
                            "default: build.repository, the main checkout. Its checkout on the build server is "
                            "<build.checkout>-<name>, one per cluster.", required=False),
        "branch": Field("branch", "Branch of the component's own repository (only with repository); "
                        "`--branch <name>=B` overrides it; default build.branch.", required=False),
        "https_port": Field("port", "Port where the component serves HTTPS itself (TLS), if it does.", required=False),
        "proxy": Section("Ports where the component reads the PROXY protocol first, so it sees each client's "
                         "address; the balancer sends to them instead of `port` and `https_port`.", {
            "http": Field("port", "PROXY protocol, then HTTP."),
            "https": Field("port", "PROXY protocol, then HTTPS.", required=False),
            "protocol": Field("proxy_protocol", "Version the balancer sends.", "v2"),
        }, required=False),
    }, many=True),
    "secrets": Field("local_path", "Folder of secret files (must not be readable or writable by group or "
                     "others); each component gets those its `secrets` names (`fab secrets.apply` pushes "
                     "changed ones and restarts the components using them). "
                     "Its subfolder etcd-peer/ holds the cluster's etcd peer CA and member certificates "
                     "(`fab etcd.certificates`); they go to etcd only, never to a container."),
    "settings": Field("settings", "The application's settings, written to the cluster's etcd under "
                      "/air/<cluster>/app/settings/<key> by setup-cluster, add-machine, every deploy and "
                      "`fab settings.apply`: only changed keys are written, keys no longer listed are removed. "
                      "A secret's value is never printed.", required=False),
    "backups": Section("Snapshots of the cluster's etcd (`fab etcd.backup`), kept on this machine. Every task "
                       "that changes etcd membership, the settings or the release history takes one first, "
                       "unless the newest is younger than `max_age`.", {
        "folder": Field("local_path", "Folder of the snapshots (0700; each snapshot and the JSON file beside it "
                        "0600). Default: etcd-backups/<cluster> beside the secrets folder.", required=False),
        "keep": Field("count", "Snapshots kept; older ones are removed after each new one.", 10),
        "max_age": Field("seconds", "Seconds: a task that changes the cluster takes no snapshot of its own while "
                         "the newest is younger than this.", 3600),
    }, required=False),
    "etcd": Section("The cluster's etcd members.", {
        "members": Field("count", "How many machines are etcd members: setup-cluster makes the first ones of "
                         "`machines` (or of `--machines`) members, add-machine adds a member only while there are "
                         "fewer, and remove-machine of a member promotes a worker to keep the count. Every other "
                         "machine is a *worker*: it runs the Air units too, beside a local etcd proxy on "
                         "127.0.0.1:2379 that forwards to the members over TLS. etcd advises 3 or 5. On an "
                         "installed cluster etcd's member list decides which machines are members, not this "
                         "number.", 5),
        "bcrypt_cost": Field("bcrypt_cost", "The cost of the bcrypt hash etcd keeps of each login's password "
                             "(`--bcrypt-cost`): every login costs the member answering it 2^cost rounds. "
                             "Takes effect for passwords set while the members run with it (setup-cluster, "
                             "`fab etcd.auth`, add-machine for its member).", ETCD_BCRYPT_COST),
    }, required=False),
    "etcd_v2": Field("flag", "Serve etcd's v2 API on the members too (for applications that read "
                     "/v2/keys/...) and write the settings and the maintenance key there as well. Takes effect "
                     "on a member when etcd starts (setup-cluster, add-machine).", False),
    "etcd_auth": Field("flag", "Turn on etcd's authentication: air-deploy logs in as etcd's root with the "
                       "credentials file etcd-root.yaml of the secrets folder (made by setup-cluster or "
                       "`fab etcd.auth` when missing; mode 0600), each component with `reads` gets its own "
                       "read-only login, and any other client is refused. On an installed cluster "
                       "`fab etcd.auth` turns it on (or, set false, off) in place. Cannot be combined with "
                       "`etcd_v2` (the v2 store has no such roles).", True),
    "cloud_config": Field("remote_path", "Where every machine reads its cloud config. Default: found per "
                          "machine, Flatcar's /var/lib/flatcar-install/user_data where it exists, else CoreOS's "
                          "/var/lib/coreos-install/user_data. The administrator's base is kept beside it "
                          "(<path>.air-base) and restored when the machine is wiped; so is the SHA-256 of the "
                          "cloud config air-deploy wrote last (<path>.air-written): a cloud config changed by "
                          "hand since is not written over (change the base instead).", required=False),
    "additions": Section("Units and files every machine of the cluster gets in its final cloud config, "
                         "merged with the administrator's base like the install's own (an entry the base "
                         "already has is refused before anything changes).", {
        "units": Section("A systemd unit, enabled and started at boot.", {
            "name": Field("unit", "Unit name."),
            "content": Field("unit_text", "The unit file."),
        }, many=True, required=False),
        "files": Section("A file.", {
            "path": Field("remote_path", "Where it is written."),
            "content": Field("text", "What it holds."),
            "permissions": Field("mode", "Its mode.", "0644"),
        }, many=True, required=False),
    }, required=False),
    "admin": Section("How the application creates its first admin user.", {
        "component": Field("name", "Component whose container runs the command."),
        "command": Field("command", "Command run in that container; it reads email, name and password "
                         "as three lines on standard input."),
    }, required=False),
    "release_command": Section("A command run once per deploy of a new release (the database's migrations), "
                               "after its images are pushed and before the first machine is drained: in a one-off "
                               "container of the component's new image on one member that answers, with the "
                               "component's secrets, etcd login and environment, under `timeouts.release_command`. "
                               "Its output is shown with the machine's name (secrets masked); a non-zero exit stops "
                               "the deploy before any machine is drained. A rollback does not run it; "
                               "`fab release-command` runs it alone.", {
        "component": Field("name", "Component whose new image (and identity) the command runs with."),
        "command": Field("command", "The command, split into words as a shell would (no shell is run; "
                         "write `sh -c '...'` for one)."),
    }, required=False),
    "hooks": Section("Commands run on the operator's machine (by `sh -c`, in the cluster file's folder) around "
                     "every deploy, each within `timeouts.hook`. They get the deploy's facts in their "
                     "environment: AIR_CLUSTER, AIR_ACTION (deploy or rollback), AIR_RELEASE, "
                     "AIR_PREVIOUS_RELEASE, AIR_VERSIONS (JSON: component -> version), AIR_BRANCH, "
                     "AIR_PERFORMER, AIR_MESSAGE, AIR_OUTCOME and AIR_SECONDS (after the deploy); never a "
                     "secret.", {
        "pre_deploy": Field("line", "Run after the build, before anything is pushed: a non-zero exit stops the "
                            "deploy there, nothing changed (a gate on CI). Not run by a rollback.", required=False),
        "post_deploy": Field("line", "Run after a deploy or rollback that succeeded; its failure is reported and "
                             "changes nothing.", required=False),
        "on_failure": Field("line", "Run after a deploy or rollback that failed (or was interrupted); its own "
                            "failure is reported.", required=False),
    }, required=False),
    "timeouts": Section("Timeouts, in seconds.", {
        "connect": Field("seconds", "SSH connection.", 10),
        "stop": Field("seconds", "Polite stop of a component before it is killed.", 30),
        "healthy": Field("seconds", "A started machine must pass its health checks within this.", 60),
        "lock": Field("seconds", "Lease of the cluster's lock; a killed or hung task's lock expires after it.", 30),
        "command": Field("seconds", "Deadline of one remote command (one without its own below); "
                         "past it the command is stopped on the host too.", 60),
        "pull": Field("seconds", "Deadline of pulling a release's images on a machine.", 300),
        "alive": Field("seconds", "An SSH peer that answers no keepalive for this long is taken for hung or gone.", 10),
        "drain": Field("seconds", "A machine leaving the balancer: its established connections may finish within "
                       "this, then it is taken out all the same.", 30),
        "release_command": Field("seconds", "Deadline of the release command (`release_command`); past it the "
                                 "one-off container is removed and the deploy stops.", 600),
        "hook": Field("seconds", "Deadline of one hook (`hooks`); past it the hook is stopped (a failure).", 60),
        "build": Field("seconds", "Deadline of building one component's image through the build server's Docker "
                       "engine (its prepare command has its own); past it the build is cut off (a failure, "
                       "nothing pushed).", 1800),
        "push": Field("seconds", "Deadline of pushing one image tag from the build server to the registry; past "
                      "it the push is cut off (a failure).", 600),
        "reboot": Field("seconds", "A machine rebooted by `fab os-upgrade` must be back within this: SSH answers "
                        "on its new boot, its etcd member healthy, every Air unit healthy. Otherwise the task "
                        "stops there, the machine out of the balancer.", 600),
    }, required=False),
    "canary": Section("How `fab deploy --canary M --judge` judges its canary: M gets `weight` percent of the "
                      "balancer's new connections for the window, and its figures (read from its router and "
                      "the balancer, as differences of two readings) are compared with those of the other "
                      "machines over the same window. The front component answers its counters on `counters`.", {
        "window": Field("seconds", "Seconds the canary is judged over (`--judge` overrides it).", 300),
        "weight": Field("percent", "Percent of the balancer's new connections the canary gets meanwhile "
                        "(`--weight` overrides it); the others share the rest.", 10),
        "min_requests": Field("count", "Requests the canary and the baseline must each answer within the window; "
                              "fewer on either side: the verdict is inconclusive.", 100),
        "max_error_rate": Field("percent", "Percent of its requests the canary may fail: 5xx answers at its "
                                "router, connection errors and server aborts at the balancer (each checked apart).",
                                1),
        "max_error_ratio": Field("ratio", "When the baseline fails requests too: the canary may fail this many "
                                 "times the baseline's rate, when that is above `max_error_rate`.", 2),
        "max_latency_ratio": Field("ratio", "How many times the baseline's request time (the 95th percentile at "
                                   "the routers) the canary's may be.",
                                   1.5),
        "min_latency": Field("milliseconds", "Request times below this are not told apart: the baseline's is "
                             "taken as at least this before the ratio is applied.", 50),
        "counters": Field("url_path", "Path on the front component's `port` (asked from the machine itself) that "
                          "answers its counters in Prometheus' text format: `air_requests_total`, "
                          "`air_responses_5xx_total` and the histogram `air_request_seconds_bucket{le=...}`.",
                          "/air-counters"),
    }, required=False),
    "rollout": Section("How a rollout (deploy, rolling-upgrade) goes through the machines; the command line's "
                       "`--max-unavailable`, `--max-failures` and `--parallel` override it.", {
        "max_unavailable": Field("unavailable", "Machines out of the balancer at once: a number, or a percent of "
                                 "the machines (rounded down, at least 1). Never more than one etcd member at a "
                                 "time, and never so many that most machines are out.", 1),
        "max_failures": Field("budget", "Machines whose upgrade may fail (each put back on its previous release "
                              "and into the balancer) before a deploy or rolling-upgrade stops; 0: the first failure stops it "
                              "(as it always stops a rollback or secrets.apply).", 0),
        "parallel": Field("count", "Machines worked on at once where that is safe (reading their facts, pulling "
                          "and staging a release): at most this many SSH sessions busy at once.", 10),
    }, required=False),
})


# ---------------------------------------------------------------- the typed result

@frozen
class Ssh:
    user: str
    port: int
    key: Path
    known_hosts: Path
    gateway: Optional[str] = None


@frozen
class Build:
    host: str
    repository: str
    checkout: str
    branch: str


@frozen
class Registry:
    address: str
    ca: Optional[Path]
    credentials: Path
    pull_credentials: Optional[Path] = None
    token_hosts: tuple = ()
    keep: int = 3

    @property
    def machine_credentials(self) -> Path:
        """The account machines pull with: the pull-only one when there is one."""
        return self.pull_credentials or self.credentials


@frozen
class Balancer:
    host: str
    bind: Optional[str]
    http_port: int
    https_port: int
    component: str
    tunnel: int
    folder: str

    @property
    def config(self) -> str:
        """haproxy's main configuration of this cluster (global, defaults, frontends)."""
        return f"{self.folder}/haproxy.cfg"

    @property
    def routers_file(self) -> str:
        """The backends listing the machines (kept by tasks.runbooks.balancer)."""
        return f"{self.folder}/routers.cfg"


@frozen
class Proxy:
    http: int
    https: Optional[int]
    protocol: str


@frozen
class Component:
    name: str
    port: int
    health: str
    source: str                        # build context, relative to the checkout ("." is its root)
    dockerfile: str = ""               # relative to the checkout, inside source; "": <source>/Dockerfile
    ignore: Optional[str] = None       # relative to the checkout, inside source; None: the default lookup
    args: tuple = ()                   # ((NAME, value template), ...), in file order
    target: Optional[str] = None
    prepare: Optional[str] = None
    prepare_timeout: int = 300
    repository: Optional[str] = None   # None: the main repository (build.repository)
    branch: Optional[str] = None       # with repository: its branch

    https_port: Optional[int] = None
    proxy: Optional[Proxy] = None
    health_status: int = 200
    health_body: Optional[str] = None
    check: str = "http"
    stop_signal: str = "SIGTERM"
    stop_command: Optional[str] = None
    secrets: tuple = ()                # file names of the secrets folder it gets
    reads: tuple = ()                  # keys (or prefixes, ending in /) below the app prefix it reads from etcd
    user: int = 0                      # uid it runs as; owns its secrets

    def __post_init__(self):
        if not self.dockerfile:
            object.__setattr__(self, "dockerfile", in_folder(self.source, "Dockerfile"))


@frozen
class Setting:
    """One key of the application's settings: its text, or the secret file whose content it is."""
    key: str                       # relative to the application's settings prefix (tasks.model.state)
    value: Optional[str] = field(default=None, repr=False)
    secret: Optional[str] = None   # a file name of the secrets folder


@frozen
class Admin:
    component: str
    command: str


@frozen
class ReleaseCommand:
    component: str
    command: str


@frozen
class Hooks:
    pre_deploy: Optional[str] = None
    post_deploy: Optional[str] = None
    on_failure: Optional[str] = None


@frozen
class Unit:
    name: str
    content: str


@frozen
class File:
    path: str
    content: str
    permissions: str


@frozen
class Additions:
    units: tuple
    files: tuple


@frozen
class Backups:
    folder: Path
    keep: int = 10
    max_age: int = 3600


@frozen
class Timeouts:
    connect: int
    stop: int
    healthy: int
    lock: int
    command: int
    pull: int
    alive: int
    drain: int
    release_command: int = 600
    hook: int = 60
    build: int = 1800
    push: int = 600
    reboot: int = 600


@frozen
class Canary:
    window: int = 300
    weight: float = 10.0
    min_requests: int = 100
    max_error_rate: float = 1.0
    max_error_ratio: float = 2.0
    max_latency_ratio: float = 1.5
    min_latency: int = 50
    counters: str = "/air-counters"


@frozen
class RolloutLimits:
    """How much of a cluster a rollout may take out at once, how many failures it tolerates, how many
    machines it works on side by side (the cluster file's ``rollout``, or the command line's)."""
    max_unavailable: str = "1"  # N, or P% (``check_unavailable``)
    max_failures: int = 0
    parallel: int = 10


@frozen
class Cluster:
    name: str
    file: Path
    namespace: str
    ssh: Ssh
    build: Build
    registry: Registry
    balancer: Balancer
    machines: tuple
    components: tuple
    secrets: Path
    cloud_config: Optional[str]
    admin: Optional[Admin]
    timeouts: Timeouts
    additions: Optional[Additions] = None
    settings: tuple = ()               # Setting, in file order
    etcd_members: int = 5              # the cap on etcd members; the other machines are workers
    etcd_bcrypt_cost: int = ETCD_BCRYPT_COST  # etcd's --bcrypt-cost
    etcd_v2: bool = False
    etcd_auth: bool = False            # the schema's default is true; False here keeps hand-made test clusters open
    backups: Optional[Backups] = None  # None only for a Cluster made by hand: ``load`` always fills it in
    release_command: Optional[ReleaseCommand] = None
    hooks: Hooks = Hooks()
    canary: Canary = Canary()
    rollout: RolloutLimits = RolloutLimits()

    def image(self, component: str) -> str:
        """Repository of a component's image, without registry or tag."""
        return f"{self.namespace}/{self.name}_{component}"

    def image_ref(self, component: str, version: str) -> str:
        """Full reference of a version tag: registry/namespace/cluster_component:version."""
        return f"{self.registry.address}/{self.image(component)}:{version}"

    def pinned_ref(self, image) -> str:
        """What a machine pulls and runs for a release's ``image``: by its manifest digest
        (registry/namespace/cluster_component@sha256:...); by its version tag only for an image
        recorded before manifest digests were kept."""
        if image.manifest:
            return f"{self.registry.address}/{self.image(image.component)}@{image.manifest}"
        return self.image_ref(image.component, image.version)

    def component(self, name: str) -> Component:
        for component in self.components:
            if component.name == name:
                return component
        raise ConfigError(f"{self.file}: no component {name!r} (known: {', '.join(self.component_names)})")

    def checkout_of(self, component: Component) -> str:
        """The checkout on the build server a component is built from."""
        return f"{self.build.checkout}-{component.name}" if component.repository else self.build.checkout

    @property
    def front(self) -> Component:
        """The component the balancer sends traffic to (the router)."""
        return self.component(self.balancer.component)

    @property
    def component_names(self) -> tuple:
        return tuple(c.name for c in self.components)

    def with_machines(self, machines) -> "Cluster":
        """The same cluster with another machine list (validated)."""
        values = dict(self.__dict__)
        values["machines"] = tuple(check_addresses(machines, "--machines"))
        return Cluster(**values)


# ---------------------------------------------------------------- validation

def in_folder(folder: str, path: str) -> str:
    """``path`` inside ``folder`` of the checkout ("." is its root)."""
    return path if folder == "." else f"{folder}/{path}"


def relative_to(folder: str, path: str) -> Optional[str]:
    """``path`` (in the checkout) as seen from ``folder``, or None when it is not inside it."""
    if folder == ".":
        return path
    return path[len(folder) + 1:] if path.startswith(folder + "/") else None


def valid_branch(branch) -> bool:
    """A branch name safe for git and the shell."""
    return isinstance(branch, str) and bool(BRANCH.fullmatch(branch)) and ".." not in branch and "//" not in branch \
        and not branch.endswith(("/", ".", ".lock")) and "/." not in branch


def _fail(file, where, expected, got) -> NoReturn:
    raise ConfigError(f"{file}: {_one_line(where)}: expected {expected}, got {got!r}")


def _one_line(where: str) -> str:
    """A field's path as the file spells it, a control character in a key shown as ?."""
    return CONTROL.sub("?", str(where))


def ip_address(text: str) -> Union[ipaddress.IPv4Address, ipaddress.IPv6Address]:
    """An IP address; ValueError when it is none, or when its scope id is not an interface's name
    (ipaddress takes any text after the %, spaces and quotes included)."""
    ip = ipaddress.ip_address(text)
    scope = getattr(ip, "scope_id", None)
    if scope is not None and not SCOPE_ID.fullmatch(scope):
        raise ValueError(text)
    return ip


def _as_ipv4(ip):
    """The IPv4 address an IPv4-mapped IPv6 address stands for (the same host), else ``ip`` itself."""
    return getattr(ip, "ipv4_mapped", None) or ip


def check_address(value, where="address", file="command line") -> str:
    """A machine's IP address in canonical form, or a ConfigError naming ``where``; no machine is reached
    at an unspecified, a loopback or a multicast address."""
    if value is None and where.startswith("--"):
        raise ConfigError(f"{where} is required ({KINDS['address']})")
    try:
        ip = ip_address(str(value).strip())
    except ValueError:
        _fail(file, where, KINDS["address"], value)
    plain = _as_ipv4(ip)
    if plain.is_unspecified or plain.is_loopback or plain.is_multicast:
        _fail(file, where, MACHINE, value)
    return str(ip)


def check_addresses(values, where="machines", file="command line") -> list:
    if isinstance(values, str):
        values = [v for v in values.split(",") if v.strip()]
    if not isinstance(values, (list, tuple)) or not values:
        _fail(file, where, KINDS["addresses"], values)
    result = [check_address(v, f"{where}[{i}]", file) for i, v in enumerate(values)]
    if len({_as_ipv4(ipaddress.ip_address(a)) for a in result}) != len(result):
        _fail(file, where, KINDS["addresses"], values)
    return result


UNAVAILABLE = re.compile(r"([0-9]{1,4})(%?)")


def _unavailable(value: Any) -> str:
    """``max_unavailable`` as the Cluster holds it: "N" or "P%"; _Invalid otherwise."""
    text = str(value).strip() if isinstance(value, (int, str)) and not isinstance(value, bool) else ""
    found = UNAVAILABLE.fullmatch(text)
    if not found or not 1 <= int(found[1]) <= (100 if found[2] else MAX_COUNT):
        raise _Invalid(value)
    return f"{int(found[1])}{found[2]}"


def check_option(value, kind: str, where: str) -> Any:
    """A command line's value of a schema ``kind`` (``unavailable``, ``budget``, ``count``), as the Cluster
    holds it; or a ConfigError naming the option ``where``."""
    text = str(value).strip()
    return _check(kind, text if kind == "unavailable" or not text.isdigit() else int(text),
                  _At("command line", where, Path("."), ""))


# ---------------------------------------------------------------- one value of a kind
#
# CHECKERS gives each kind of KINDS its checker: it takes the value as the file says it, and returns it
# as the Cluster holds it (normalized), or raises _Invalid; _check turns that into the one-line error.

@frozen
class _At:
    """Where a value is read: the file as shown, the field's path, the file's folder, the cluster's name."""
    file: str
    where: str
    base_dir: Path
    cluster: str


class _Invalid(Exception):
    """A value its kind refuses: what to show, and the field when it is an entry of the value."""

    def __init__(self, got: Any, where: Optional[str] = None) -> None:
        super().__init__(got)
        self.got = got
        self.where = where


Checker = Callable[[Any, _At], Any]


def _check(kind: str, value: Any, at: _At) -> Any:
    """``value`` of a field of ``kind``, as the Cluster holds it; or a ConfigError naming the field."""
    try:
        return CHECKERS[kind](value, at)
    except _Invalid as refused:
        _fail(at.file, refused.where or at.where, KINDS[kind], refused.got)


def _number(low: float, high: float, above: bool = False) -> Checker:
    """A number from ``low`` (excluded when ``above``) to ``high``, as a float."""
    def check(value: Any, at: _At) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not (low < value if above else low <= value) or value > high:
            raise _Invalid(value)
        return float(value)
    return check


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid(value)
    return value


def _whole(low: int, high: float = math.inf) -> Checker:
    """A kind that is a whole number (not a bool) from ``low`` to ``high``."""
    def check(value: Any, at: _At) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _Invalid(value)
        return value
    return check


def _same(value: str) -> str:
    return value


def _word(valid: Callable[[str], Any], normal: Callable[[str], str] = _same) -> Checker:
    """A kind that is one string of a form: written the usual way (``normal``), then checked by a rule."""
    def check(value: Any, at: _At) -> str:
        value = normal(_string(value))
        if not valid(value):
            raise _Invalid(value)
        return value
    return check


def _flag(value: Any, at: _At) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(value)
    return value


def _text(value: Any, at: _At) -> str:
    if not _string(value).strip():
        raise _Invalid(value)
    return value


def _line(value: Any, at: _At) -> str:
    """Text that ends up on one line of a unit file or a shell command: a newline there would start another."""
    if CONTROL.search(_text(value, at)):
        raise _Invalid(value)
    return value


def _command(value: Any, at: _At) -> str:
    """A command create-admin (or the release command) splits into words (shlex) to run them in a container."""
    try:
        shlex.split(_line(value, at))
    except ValueError:  # an unbalanced quote or a trailing backslash
        raise _Invalid(value) from None
    return value


def _unit_text(value: Any, at: _At) -> str:
    """A unit file's text: its lines, each free of control characters (a CR would stay in every value)."""
    if CONTROL.search(_text(value, at).replace("\n", "").replace("\t", "")):
        raise _Invalid(value)
    return value


def _secret_names(value: Any, at: _At) -> tuple:
    if not isinstance(value, list) or not value or len(set(map(str, value))) != len(value) \
            or not all(isinstance(v, str) and SECRET_NAME.fullmatch(v) for v in value):
        raise _Invalid(value)
    return tuple(value)


def _etcd_reads(value: Any, at: _At) -> tuple:
    """Keys below the app prefix: `maintenance`, `settings/<key>` or `settings/<prefix>/`; checked
    against the settings themselves once the whole file is read (``_check_reads``)."""
    if not isinstance(value, list) or not value or len(set(map(str, value))) != len(value):
        raise _Invalid(value)
    for entry in value:
        if not isinstance(entry, str) or not (entry == MAINTENANCE_READ or _setting_read(entry) is not None):
            raise _Invalid(entry)
    return tuple(value)


def _setting_read(entry: str) -> Optional[str]:
    """The setting key (or prefix, ending in /) a ``reads`` entry names, None when it names none."""
    if not entry.startswith(SETTINGS_READ):
        return None
    rest = entry[len(SETTINGS_READ):]
    return rest if SETTING_KEY.fullmatch(rest.removesuffix("/")) else None


def _build_args(value: Any, at: _At) -> tuple:
    """((NAME, value template), ...), in file order."""
    if not isinstance(value, dict) or not value:
        raise _Invalid(value)
    return tuple(_build_arg(name, text, f"{at.where}.{name}") for name, text in value.items())


def _build_arg(name: Any, text: Any, where: str) -> tuple:
    if not isinstance(name, str) or not BUILD_ARG.fullmatch(name) or not isinstance(text, (str, int, float)) \
            or isinstance(text, bool):
        raise _Invalid(text, where)
    try:
        str(text).format(**{v: "" for v in BUILD_ARG_VALUES})
    except (KeyError, IndexError, ValueError):
        raise _Invalid(text, where) from None
    return (name, str(text))


def _address(value: Any, at: _At) -> str:
    """An IP address in canonical form (any: the balancer may bind the wildcard or the loopback)."""
    try:
        return str(ip_address(_string(value).strip()))
    except ValueError:
        raise _Invalid(value) from None


def _addresses(value: Any, at: _At) -> tuple:
    return tuple(check_addresses(value, at.where, at.file))


def _host(value: Any, at: _At) -> str:
    """An IP address in canonical form, or a DNS name as written."""
    value = _string(value)
    try:
        return str(ip_address(value))
    except ValueError:
        if not HOSTNAME.fullmatch(value):
            raise _Invalid(value) from None
        return value


def _hosts(value: Any, at: _At) -> tuple:
    if not isinstance(value, list):
        raise _Invalid(value)
    return tuple(_check("host", v, replace(at, where=f"{at.where}[{i}]")) for i, v in enumerate(value))


def _hostport(value: Any, at: _At) -> str:
    host, sep, port = _string(value).rpartition(":")
    if not sep or not PORT.fullmatch(port) or not 0 < int(port) < 65536:
        raise _Invalid(value)
    _check("host", host.strip("[]"), at)  # a bad host is reported as a host
    return value


def _local_path(value: Any, at: _At) -> Path:
    return (at.base_dir / Path(_string(value)).expanduser()).resolve()


def _remote_path(value: Any, at: _At) -> str:
    value = _string(value).replace("{cluster}", at.cluster)
    if not REMOTE_PATH.fullmatch(value) or "/../" in value + "/":
        raise _Invalid(value)
    return value


def _repo_path(value: Any, at: _At) -> str:
    value = _string(value)
    if value.startswith("/") or ".." in value.split("/") or not REMOTE_PATH.fullmatch("/" + value):
        raise _Invalid(value)
    return value.strip("/")


def _settings(value: Any, at: _At) -> tuple:
    """``settings``: key -> text, number or {secret: NAME}, as Setting entries in file order."""
    if not isinstance(value, dict) or not value:
        raise _Invalid(value)
    entries = []
    for key, text in value.items():
        where = f"{at.where}.{key}"
        if not isinstance(key, str) or not SETTING_KEY.fullmatch(key):
            _fail(at.file, where, "a key: words of letters, digits, . _ - joined by /", key)
        if isinstance(text, dict):
            if set(text) != {"secret"} or not isinstance(text["secret"], str) or not SECRET_NAME.fullmatch(text["secret"]):
                _fail(at.file, where, "{secret: NAME}, NAME a file of the secrets folder", text)
            entries.append(Setting(key, secret=text["secret"]))
        elif isinstance(text, bool):
            entries.append(Setting(key, "true" if text else "false"))
        elif isinstance(text, (str, int, float)):
            entries.append(Setting(key, str(text)))
        else:
            _fail(at.file, where, "a text, a number or {secret: NAME}", text)
    return tuple(entries)


CHECKERS: dict[str, Checker] = {
    "text": _text,
    "line": _line,
    "command": _command,
    "unit_text": _unit_text,
    "name": _word(COMPONENT_NAME.fullmatch),
    "namespace": _word(DOCKER_NAMESPACE.fullmatch),
    "seconds": _whole(1, MAX_SECONDS),
    "count": _whole(1, MAX_COUNT),
    "port": _whole(1, 65535),
    "address": _address,
    "addresses": _addresses,
    "hosts": _hosts,
    "host": _host,
    "hostport": _hostport,
    "local_path": _local_path,
    "remote_path": _remote_path,
    "url_path": _word(URL_PATH.fullmatch),
    "unit": _word(UNIT_NAME.fullmatch),
    "mode": _word(FILE_MODE.fullmatch, lambda v: v.rjust(4, "0")),
    "repo_path": _repo_path,
    "branch": _word(valid_branch),
    "stage": _word(STAGE.fullmatch),
    "build_args": _build_args,
    "proxy_protocol": _word(lambda v: v in ("v1", "v2")),
    "http_status": _whole(100, 599),
    "check": _word(lambda v: v in HEALTH_CHECKS),
    "signal": _word(SIGNAL.fullmatch, lambda v: v if v.startswith("SIG") else f"SIG{v}"),
    "secret_names": _secret_names,
    "uid": _whole(0, MAX_UID),
    "flag": _flag,
    "percent": _number(0, 100, above=True),
    "ratio": _number(1, 1000),
    "unavailable": lambda value, at: _unavailable(value),
    "budget": _whole(0, MAX_COUNT),
    "milliseconds": _whole(1, 600000),
    "bcrypt_cost": _whole(*BCRYPT_COSTS),
    "settings": _settings,
    "etcd_reads": _etcd_reads,
}


def _validate(section: Section, data: Any, at: _At) -> dict:
    """A section's fields, checked against its schema, as a dict; defaults filled in, None for absent ones."""
    if not isinstance(data, dict):
        _fail(at.file, at.where or "top level", "a mapping of fields", data)
    _refuse_unknown_fields(section, data, at)
    return {key: _field(spec, data.get(key), _inside(at, key)) for key, spec in section.fields.items()}


def _inside(at: _At, key: str) -> _At:
    """Where field ``key`` of the section at ``at`` is read."""
    return replace(at, where=f"{at.where}.{key}" if at.where else key)


def _refuse_unknown_fields(section: Section, data: dict, at: _At) -> None:
    unknown = sorted(set(data) - set(section.fields))
    if unknown:
        prefix = f"{at.where}." if at.where else ""
        raise ConfigError(f"{at.file}: {_one_line(prefix + str(unknown[0]))}: unknown field "
                          f"(expected one of: {', '.join(section.fields)})")


def _field(spec: Union[Field, Section], value: Any, at: _At) -> Any:
    """One field of a section (None: not given), a value or a section."""
    if isinstance(spec, Section):
        return _subsection(spec, value, at)
    if value is not None:
        return _check(spec.kind, value, at)
    if spec.default is not None:
        return _check(spec.kind, spec.default, at)
    if spec.required:
        raise ConfigError(f"{at.file}: {at.where}: missing ({KINDS[spec.kind]}: {spec.doc})")
    return None


def _subsection(spec: Section, value: Any, at: _At) -> Any:
    """A section inside a section: a dict, a list of them (``many``), or None when it is optional and absent
    (unless all its fields have defaults)."""
    if value is None:
        if spec.required:
            raise ConfigError(f"{at.file}: {at.where}: missing ({spec.doc})")
        return _validate(spec, {}, at) if _all_defaulted(spec) else None
    if not spec.many:
        return _validate(spec, value, at)
    if not isinstance(value, list) or not value:
        _fail(at.file, at.where, "a non-empty list", value)
    return [_validate(spec, item, replace(at, where=f"{at.where}[{i}]")) for i, item in enumerate(value)]


def _all_defaulted(section: Section) -> bool:
    return all(isinstance(f, Field) and (f.default is not None or not f.required) for f in section.fields.values())


def _read_yaml(path: Path, shown: str) -> dict:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{shown}: cannot read: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{shown}: malformed YAML{at}: {problem}") from None
    if not isinstance(data, dict):
        _fail(shown, "top level", "a mapping of fields", data)
    return data


def clusters_dir() -> Path:
    """The folder of the cluster files: $AIR_CLUSTERS_DIR, read when asked, else clusters/."""
    return Path(os.environ.get(CLUSTERS_VARIABLE, PROJECT_ROOT / "clusters"))


def known_clusters(directory: Path = None) -> list:
    directory = Path(directory or clusters_dir())
    return sorted(p.stem for p in directory.glob("*.yaml"))


def load(name: str, directory: Path = None) -> Cluster:
    """Read and validate ``clusters/<name>.yaml``; raise ConfigError on any problem."""
    file = _cluster_file(name, Path(directory or clusters_dir()))
    shown = _shown(file)
    data = _with_include(_read_yaml(file, shown), file, shown)
    values = _validate(SCHEMA, data, _At(shown, "", file.parent, name))
    _settle_components(values, shown)
    _check_private(values["secrets"], shown)
    _check_secret_names(values, shown)
    _check_reads(values, shown)
    return _cluster(name, file, values, shown)


def _cluster_file(name: Any, directory: Path) -> Path:
    """The file of cluster ``name``: a valid name, and a file that exists."""
    if not isinstance(name, str) or not CLUSTER_NAME.fullmatch(name):
        raise ConfigError(f"cluster name {name!r} is not valid ({KINDS['name']})")
    file = directory / f"{name}.yaml"
    if not file.exists():
        known = ", ".join(known_clusters(directory)) or "none"
        raise ConfigError(f"unknown cluster {name!r}: no {file} (known: {known})")
    return file


def _with_include(data: dict, file: Path, shown: str) -> dict:
    """The file's fields, over those of the file it includes when it names one."""
    include = data.get("include")
    if not include:
        return data
    if not isinstance(include, str):
        _fail(shown, "include", KINDS["local_path"], include)
    included = (file.parent / Path(include).expanduser()).resolve()
    if not included.exists():
        hint = " (run `fab sandbox.up` first)" if ".sandbox" in included.parts else ""
        raise ConfigError(f"{shown}: include: {_shown(included)} does not exist{hint}")
    base = _read_yaml(included, _shown(included))
    base.pop("include", None)
    return _merge(base, data)


def _settle_components(values: dict, shown: str) -> None:
    """Component names are distinct, and the admin's, the release command's and the balancer's component are
    among them;
    the balancer's, when not given, becomes the first component."""
    names = [c["name"] for c in values["components"]]
    if len(set(names)) != len(names):
        _fail(shown, "components", "distinct component names", names)
    one_of = f"one of the components ({', '.join(names)})"
    admin, balancer = values["admin"], values["balancer"]
    if admin and admin["component"] not in names:
        _fail(shown, "admin.component", one_of, admin["component"])
    release_command = values["release_command"]
    if release_command and release_command["component"] not in names:
        _fail(shown, "release_command.component", one_of, release_command["component"])
    balancer["component"] = balancer["component"] or names[0]
    if balancer["component"] not in names:
        _fail(shown, "balancer.component", one_of, balancer["component"])


def _cluster(name: str, file: Path, values: dict, shown: str) -> Cluster:
    """The typed Cluster of the checked values; the components' defaults filled in and their paths checked."""
    return Cluster(
        name=name, file=file, namespace=values["namespace"],
        ssh=Ssh(**values["ssh"]), build=Build(**values["build"]),
        registry=Registry(**{**values["registry"], "token_hosts": values["registry"]["token_hosts"] or ()}),
        balancer=Balancer(**values["balancer"]),
        machines=values["machines"],
        components=tuple(_component(c, f"{shown}: components[{i}]", values["build"])
                         for i, c in enumerate(values["components"])),
        secrets=values["secrets"], cloud_config=values["cloud_config"],
        admin=Admin(**values["admin"]) if values["admin"] else None,
        timeouts=Timeouts(**values["timeouts"]),
        additions=_additions(values["additions"]),
        settings=values["settings"] or (), etcd_members=values["etcd"]["members"],
        etcd_bcrypt_cost=values["etcd"]["bcrypt_cost"],
        etcd_v2=values["etcd_v2"], etcd_auth=values["etcd_auth"],
        backups=_backups(values["backups"], values["secrets"], name),
        release_command=ReleaseCommand(**values["release_command"]) if values["release_command"] else None,
        hooks=Hooks(**values["hooks"]) if values["hooks"] else Hooks(),
        canary=Canary(**values["canary"]),
        rollout=RolloutLimits(**values["rollout"]),
    )


def backups_folder(secrets: Path, name: str) -> Path:
    """Where a cluster's snapshots go when its file names no folder: beside its secrets folder."""
    return secrets.parent / "etcd-backups" / name


def _backups(values: dict, secrets: Path, name: str) -> Backups:
    return Backups(folder=values["folder"] or backups_folder(secrets, name), keep=values["keep"],
                   max_age=values["max_age"])


def _check_private(folder: Path, shown: str) -> None:
    """The secrets folder, when there is one, is its owner's alone (like the registry credentials file)."""
    try:
        mode = folder.stat().st_mode
    except OSError:
        return  # not made yet: each secret named is checked to be a file of it
    if mode & 0o077:
        raise ConfigError(f"{shown}: secrets: {folder} must be private (mode is {mode & 0o777:o}); "
                          f"run: chmod 700 {folder}")


def _check_secret_names(values: dict, shown: str) -> None:
    """Every secret a component or a setting names is a file of the secrets folder."""
    folder = values["secrets"]
    named = [(f"components[{i}].secrets", n) for i, c in enumerate(values["components"]) for n in c["secrets"] or ()]
    named += [(f"settings.{s.key}", s.secret) for s in values["settings"] or () if s.secret]
    for where, name in named:
        if not (folder / name).is_file():
            raise ConfigError(f"{shown}: {where}: {name!r} is not a file of the secrets folder {folder}")


def _check_reads(values: dict, shown: str) -> None:
    """What components read names settings there are, a secret one only by its own key; etcd's
    authentication goes without its v2 store; no component secret takes an etcd login's file name."""
    if values["etcd_auth"] and values["etcd_v2"]:
        raise ConfigError(f"{shown}: etcd_v2: etcd's v2 store has no roles, so with etcd_auth every process on "
                          f"a machine could read and write it; set etcd_auth: false to keep it")
    settings = {s.key: s for s in values["settings"] or ()}
    for i, component in enumerate(values["components"]):
        where = f"{shown}: components[{i}]"
        reserved = set(component["secrets"] or ()) & set(RESERVED_SECRETS)
        if reserved:
            raise ConfigError(f"{where}.secrets: {sorted(reserved)[0]!r} is the name of an etcd login's file: "
                              f"rename that secret")
        for entry in component["reads"] or ():
            _check_read(entry, settings, f"{where}.reads")


def _check_read(entry: str, settings: dict, where: str) -> None:
    key = _setting_read(entry)
    if key is None:
        return
    if not key.endswith("/"):
        if key not in settings:
            raise ConfigError(f"{where}: {entry!r}: {key!r} is not one of the settings")
        return
    below = [s for k, s in settings.items() if k.startswith(key)]
    if not below:
        raise ConfigError(f"{where}: {entry!r}: no setting is below {key!r}")
    secret = next((s for s in below if s.secret), None)
    if secret:
        raise ConfigError(f"{where}: {entry!r} would cover {secret.key!r}, a secret: name the keys it needs one "
                          f"by one (a secret only by its own key)")


def _additions(values) -> Optional[Additions]:
    if not values:
        return None
    return Additions(units=tuple(Unit(**u) for u in values["units"] or ()),
                     files=tuple(File(**f) for f in values["files"] or ()))


def _component(values: dict, where: str, build: dict) -> Component:
    """A component's entry, its defaults filled in and its build paths checked against each other."""
    values = {**values, "source": values["source"] or f"components/{values['name']}", "args": values["args"] or (),
              "secrets": values["secrets"] or (), "reads": values["reads"] or (),
              "proxy": Proxy(**values["proxy"]) if values["proxy"] else None}
    if values["branch"] and not values["repository"]:
        raise ConfigError(f"{where}.branch: only a component with its own repository has its own branch")
    if values["repository"] and not values["branch"]:
        values["branch"] = build["branch"]
    component = Component(**values)
    for key in ("dockerfile", "ignore"):
        path = getattr(component, key)
        if path is not None and relative_to(component.source, path) is None:
            raise ConfigError(f"{where}.{key}: {path} is not inside the build context {component.source}")
    return component


def _merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _shown(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------- documentation

def readme() -> str:
    """clusters/README.md, written from SCHEMA."""
    lines = ["# Target clusters", "",
             "<!-- Written by `python -m tasks.model.cluster --readme`; edit tasks/model/cluster.py instead. -->", "",
             SCHEMA.doc, "",
             "Every field is checked before anything is contacted; a problem is reported as one line "
             "naming the file, the field and what was expected.", "",
             "| field | kind | default | meaning |", "| --- | --- | --- | --- |"]

    def walk(section: Section, prefix: str):
        for key, spec in section.fields.items():
            path = f"{prefix}{key}"
            if isinstance(spec, Section):
                shape = "list of mappings" if spec.many else "mapping"
                optional = "" if spec.required else " (optional)"
                lines.append(f"| `{path}` | {shape}{optional} | | {spec.doc} |")
                walk(spec, f"{path}[]." if spec.many else f"{path}.")
            else:
                default = f"`{spec.default}`" if spec.default is not None else ("" if spec.required else "(optional)")
                lines.append(f"| `{path}` | {KINDS[spec.kind]} | {default} | {spec.doc} |")

    walk(SCHEMA, "")
    return "\n".join(_markdown(line) for line in lines) + "\n"


def _markdown(line: str) -> str:
    """Angle brackets outside `code` spans, escaped so Markdown does not take them for HTML."""
    if line.startswith("<!--"):
        return line
    parts = line.split("`")
    return "`".join(p.replace("<", "&lt;").replace(">", "&gt;") if i % 2 == 0 else p for i, p in enumerate(parts))


if __name__ == "__main__":
    if sys.argv[1:] == ["--readme"]:
        sys.stdout.write(readme())
    else:
        sys.exit("usage: python -m tasks.model.cluster --readme")
