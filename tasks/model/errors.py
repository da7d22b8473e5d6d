"""The errors air-deploy raises on purpose.

Each carries a message a person can act on. The command line (see
``fabfile.main``) prints ``error: <message>`` on one line and exits non-zero,
without a traceback; anything else that escapes is a bug and keeps its trace.
"""


class AirError(Exception):
    """A failure with a message for the operator."""


class ConfigError(AirError):
    """A cluster file, VERSION or a command-line value is not what it should be."""


class RemoteError(AirError):
    """A command on a machine, the build server, registry or balancer failed."""


class PreflightError(AirError):
    """A check before any change failed; nothing was touched."""


class HealthError(AirError):
    """A machine or component did not become healthy in time."""


class LockedError(AirError):
    """Another deploy holds the cluster's lock."""


class DeadlineError(RemoteError):
    """A remote step did not end within its deadline; it was stopped there when the host answered."""


class Halt(AirError):
    """The task must change nothing more (see its subclasses); raised before the next change."""


class Interrupted(Halt):
    """The operator pressed Ctrl-C or sent SIGTERM."""


def failure_kind(failure: Exception) -> str:
    """How a record names what ended a task: "interrupted" (Ctrl-C, SIGTERM) or "failed"."""
    return "interrupted" if isinstance(failure, Interrupted) else "failed"


class LostLock(Halt):
    """The cluster's lock is no longer this task's: its lease expired or the key was taken away."""


INTERRUPTED = 130  # as shells report a command ended by Ctrl-C


class RecordError(AirError):
    """A record read from the cluster's etcd is not what air-deploy writes (planted or damaged):
    the task stops with the key named, and none of its values reaches a command."""
