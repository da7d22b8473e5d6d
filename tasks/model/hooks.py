"""The cluster file's hooks: which one runs when, and the environment each is given. Pure.

A deploy runs ``pre_deploy`` after its build and before anything is pushed (a non-zero exit
stops it there), then ``post_deploy`` when it succeeded or ``on_failure`` when it did not; a
rollback runs the last two as well (never ``pre_deploy``: a rollback is the way out and is not
gated). ``Facts`` is what a deploy or rollback knows of itself, filled in as it goes;
``environment`` is what a hook sees of it: the operator's PATH, HOME and locale, and the
facts as AIR_* variables. Nothing else of the operator's environment, and never a secret: the
facts are names, ids, versions and the operator's own message.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Optional

from tasks.model.errors import ConfigError

PRE, POST, FAILURE = "pre_deploy", "post_deploy", "on_failure"
# What a hook keeps of the operator's environment: enough to find its tools and speak its language.
PASSED_ON = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME")
MESSAGE_MAX = 200
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass
class Facts:
    """What a deploy (``action``) or rollback knows of itself; each field filled in once known."""
    cluster: str
    action: str = "deploy"
    performer: str = ""
    message: str = ""
    release: str = ""
    previous: str = ""
    versions: dict = field(default_factory=dict)
    branch: str = ""
    outcome: str = ""
    seconds: Optional[float] = None


def environment(facts: Facts, operator_env: dict) -> dict:
    """The environment of a hook: ``PASSED_ON`` of the operator's, and the facts. Pure."""
    kept = {k: operator_env[k] for k in PASSED_ON if k in operator_env}
    return {**kept,
            "AIR_CLUSTER": facts.cluster, "AIR_ACTION": facts.action, "AIR_RELEASE": facts.release,
            "AIR_PREVIOUS_RELEASE": facts.previous, "AIR_VERSIONS": json.dumps(facts.versions, sort_keys=True),
            "AIR_BRANCH": facts.branch, "AIR_PERFORMER": facts.performer, "AIR_MESSAGE": facts.message,
            "AIR_OUTCOME": facts.outcome,
            "AIR_SECONDS": "" if facts.seconds is None else f"{facts.seconds:.1f}"}


def after(hooks, failed: bool) -> Optional[tuple]:
    """(name, command) of the hook that runs after a deploy or rollback, or None when the cluster
    file has none. Pure."""
    name = FAILURE if failed else POST
    command = getattr(hooks, name)
    return (name, command) if command else None


def check_message(message) -> str:
    """``--message``: one line of text, without control characters, at most ``MESSAGE_MAX``
    characters; ConfigError otherwise."""
    if not isinstance(message, str) or not message.strip() or CONTROL.search(message) or len(message) > MESSAGE_MAX:
        raise ConfigError(f"--message: expected one line of text (no control characters, at most {MESSAGE_MAX} "
                          f"characters), got {message!r}"[:300])
    return message.strip()


def subject(text: str) -> str:
    """A commit's subject as a deploy's message: its first line, control characters dropped, cut to
    ``MESSAGE_MAX``. Pure."""
    first = (text or "").strip().split("\n")[0]
    return CONTROL.sub("", first)[:MESSAGE_MAX]
