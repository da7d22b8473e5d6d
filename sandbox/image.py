"""The sandbox's machine image: Debian packages via mmdebstrap (``machine-image.sh``), imported
into this machine's Docker engine and tagged with a hash of that recipe.

The standard library only: ``sandbox/prepare-host`` starts it (``python3 -m sandbox.image``) as
soon as mmdebstrap is on a fresh machine, before the Docker engine and the Python packages, so
that the image's minute of downloads and unpacking runs beside theirs. The rootfs is made first;
the import waits for the engine to answer. One build at a time on this machine, whichever
sandbox asks (an fcntl lock): whoever needs the image meanwhile waits for it, and builds it
itself should that build have failed.
"""
from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from tasks.model.errors import AirError

RECIPE = Path(__file__).resolve().parent / "machine-image.sh"
IMAGE_REPO = "air-sandbox/machine"
IMAGE_LOCK = Path(tempfile.gettempdir()) / "air-sandbox-image.lock"
ENGINE_WAIT = 600  # s: how long a build started before the engine waits for it, to import


def image_tag() -> str:
    digest = hashlib.sha256(RECIPE.read_bytes()).hexdigest()[:12]
    return f"{IMAGE_REPO}:{digest}"


@contextmanager
def locked(path: Path):
    """Held while ``path`` is locked (fcntl): other processes asking for it wait."""
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_image(say=print) -> str:
    """The machine image's tag, built first when this engine does not have it."""
    tag = image_tag()
    if _have_image(tag):
        return tag
    with locked(IMAGE_LOCK):
        if not _have_image(tag):  # built meanwhile by whoever held the lock
            _build_image(tag, say)
    return tag


def _have_image(tag: str) -> bool:
    try:
        return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0
    except FileNotFoundError:  # no Docker client yet (a fresh machine being prepared)
        return False


def _engine_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False


def _build_image(tag: str, say) -> None:
    if not shutil.which("mmdebstrap"):
        raise AirError("sandbox: mmdebstrap is needed to build the machine image (apt-get install mmdebstrap)")
    say(f"sandbox: building machine image {tag} from Debian packages (about a minute)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="air-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        made = subprocess.run(["sh", str(RECIPE), str(rootfs)], capture_output=True, text=True, timeout=1800)
        if made.returncode != 0:
            raise AirError(f"sandbox: the machine image's recipe failed: {(made.stderr.strip().splitlines() or ['?'])[-1]}")
        deadline = time.monotonic() + ENGINE_WAIT
        while not _engine_answers():
            if time.monotonic() > deadline:
                raise AirError(f"sandbox: no Docker engine answered within {ENGINE_WAIT} s to import the machine image")
            time.sleep(1)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(["docker", "import", "-c", 'CMD ["/lib/systemd/systemd"]', "-", tag],
                                  stdin=tar.stdout, capture_output=True, text=True)
        tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise AirError(f"sandbox: importing the machine image failed: {imported.stderr.strip()}")
    say(f"sandbox: machine image ready in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    try:
        ensure_image()
    except AirError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
