"""Shell text every host command is made of: quoting, deadlines, output tails and staged files.

``q`` is the one quoting function for any value that reaches a shell. ``deadline_wrapped`` and
``stream_wrapped`` put a command under ``timeout`` (so a deadline holds on the remote side too)
and ``sudo -n``. ``staging_command`` writes a set of files into a private folder from a base64
tar on standard input, leaving out those already in place, and ``staged_commands`` swaps them in
later; the executor sends these, and nothing here runs anything.
"""
from __future__ import annotations

import base64
import io
import shlex
import tarfile
from typing import NamedTuple

from tasks.model.errors import RemoteError

TIMED_OUT = 124      # what `timeout` exits with when it had to stop the command


KILL_AFTER = 5       # seconds `timeout` waits after SIGTERM before SIGKILL


def q(value) -> str:
    """Quote one value for the remote shell."""
    return shlex.quote(str(value))


def tail(text: str, lines: int = 3) -> str:
    kept = [line for line in (text or "").strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or "(no output)"


def deadline_wrapped(command: str, deadline: int, sudo: bool) -> str:
    """``command`` as sent: under ``timeout`` so it ends on the host itself when its deadline
    passes, through ``sudo -n`` for a login user that is not root. Pure."""
    wrapped = f"timeout -k {KILL_AFTER} {int(deadline)} sh -c {q(command)}"
    return f"sudo -n {wrapped}" if sudo else wrapped


def stream_wrapped(command: str, sudo: bool) -> str:
    """``command`` as ``Executor.stream`` sends it: it has no deadline, so it is ended on the host
    when its standard input ends (our side closed, or the connection gone). A background list
    gets /dev/null as its input in sh, so the channel's input is kept on descriptor 3. Pure."""
    guarded = (f"exec 3<&0; {command} </dev/null 3<&- & pid=$!; "
               "{ cat <&3 >/dev/null; kill $pid; } >/dev/null 2>&1 & wait $pid")
    return f"{'sudo -n ' if sudo else ''}sh -c {q(guarded)}"


class Staged(NamedTuple):
    swap: str     # the command putting every staged file in place at once
    discard: str  # the command removing them instead


def folders_of(files) -> str:
    """The folders ``(path, content, mode)`` files go into, quoted for the shell, once each. Pure."""
    return " ".join(q(f) for f in sorted({path.rsplit("/", 1)[0] or "/" for path, _, _ in files}))


def staged_commands(files, staging: str, suffix: str) -> Staged:
    """The commands that put ``(path, content, mode)`` files staged in ``staging`` (as
    ``<staging>/<index>``) in place, each installed with its mode, or discard them. Pure.
    A file no longer staged (its target was already so: ``staging_command``) is left alone.
    Both commands end with the status of what they did, so they chain with ``&&``."""
    files = list(files)
    moves = " && ".join(f"{{ [ ! -e {q(f'{staging}/{i}')} ] || {{ install -m {mode:o} {q(f'{staging}/{i}')} "
                        f"{q(path + suffix)} && mv -f {q(path + suffix)} {q(path)}; }}; }}"
                        for i, (path, _, mode) in enumerate(files))
    cleanup = f"rm -rf {q(staging)}"
    # umask 077 while installing: a file being written is never readable by others, whatever its final mode.
    return Staged(f"if mkdir -p {folders_of(files)} && umask 077 && {moves}; then {cleanup}; else {cleanup}; false; fi",
                  cleanup)


STAGED_MARK = "air-staged:"  # heads the line where the staging command prints its folder


def unchanged_filter(files) -> str:
    """Shell: removes from ``$staging`` each staged ``(path, content, mode)`` file whose target
    already has its content, mode and owner (whoever runs it), so the swap installs only what
    changes. One ``stat`` for every mode, a ``cmp`` only where the mode is right. Pure."""
    if not files:
        return "true"
    paths = " ".join(q(path) for path, _, _ in files)
    same = "; ".join(f'case "$modes" in *{q(f"|{mode:o}:")}"$owner "{q(path + "|")}*) '
                     f'cmp -s "$staging/{i}" {q(path)} && rm -f "$staging/{i}";; esac'
                     for i, (path, _, mode) in enumerate(files))
    return (f"owner=$(id -u):$(id -g); modes=$(stat -c '|%a:%u:%g %n|' -- {paths} 2>/dev/null); "
            f"{same}; true")


def staging_command(files, before: str = None, after: str = None, undo: str = None) -> str:
    """Makes a private folder (mktemp: 0700), unpacks there the archive ``archive_of(files)`` sent
    on standard input, drops the files already in place (``unchanged_filter``) and prints the folder
    after ``STAGED_MARK``. ``before`` runs meanwhile (a pull: the unpacking is hidden behind it);
    ``after`` last, the folder removed when it fails: one round trip for a step and its files.
    ``undo`` runs when any of it fails (what ``before`` may have changed put back). Pure."""
    failed = f'rm -rf "$staging"; {undo}; false' if undo else 'rm -rf "$staging"; false'
    unpack = f'base64 -d <&3 | tar -x --no-same-owner -C "$staging" && {{ {unchanged_filter(list(files))}; }}'
    if before:
        # Standard input is the archive: a job in the background reads it only through a copy (fd 3).
        stage = (f'exec 3<&0 && staging=$(mktemp -d) && {{ {{ {unpack}; }} & unpacking=$!; }} && '
                 f'{{ {{ {before}; }} && wait $unpacking || {{ wait $unpacking; {failed}; }}; }}')
    else:
        stage = f'exec 3<&0 && staging=$(mktemp -d) && {{ {unpack} || {{ {failed}; }}; }}'
    after_it = f'{{ {after}; }} || {{ {failed}; }}' if after else None
    return " && ".join(part for part in (stage, f'echo "{STAGED_MARK}$staging"', after_it) if part)


def archive_of(files) -> str:
    """The contents of ``(path, content, mode)`` files as a tar archive of ``0``, ``1``, ...
    (each 0600: its mode is given when installed), in base64 for a command's standard input. Pure."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for i, (_, content, _) in enumerate(files):
            data = content.encode() if isinstance(content, str) else content
            member = tarfile.TarInfo(str(i))
            member.size, member.mode = len(data), 0o600
            tar.addfile(member, io.BytesIO(data))
    return base64.b64encode(buffer.getvalue()).decode()


def staged_folder(output: str) -> str:
    """The folder a ``staging_command`` printed. Pure."""
    for line in output.splitlines():
        if line.startswith(STAGED_MARK):
            return line[len(STAGED_MARK):].strip()
    raise RemoteError(f"the staging command printed no folder: {tail(output)}")
