"""What the build server runs for a build, and the options given to its Docker engine.

The branches asked for (one for the main checkout, one per component naming its own repository),
the checkouts they mean, the shell scripts that update them and print their commits, a
component's prepare script, the build context cut to what its ignore file keeps, the build's
options (Dockerfile, arguments, target, tag ``candidate-<commit>``), and the parsers of what a
build prints. Pure text, tested by equality; ``tasks.runbooks.build`` runs it.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from typing import Optional

from tasks.commands.shell import q
from tasks.model.cluster import Component, relative_to, valid_branch
from tasks.model.errors import ConfigError
from tasks.model.frozen import frozen

CANDIDATE = "candidate-"  # + commit: a freshly built image, before push gives it a version


BUILD_LOG_LINES = 15




NO_COMMIT = "none"        # what commits_command prints for a checkout that does not exist


def check_branch(branch: str) -> str:
    """A branch name safe for git and the shell, or a ConfigError (before anything is contacted)."""
    if not valid_branch(branch):
        raise ConfigError(f"branch {branch!r} is not a valid branch name "
                          "(letters, digits, . _ - /; no '..', no shell characters)")
    return branch


@frozen
class Branches:
    """The branch of every checkout of a build: the main repository's, and those given for
    components with their own repository (the others keep their cluster file's branch)."""
    main: str
    components: tuple = ()  # ((component, branch), ...), sorted

    def of(self, component) -> str:
        if not component.repository:
            return self.main
        return dict(self.components).get(component.name, component.branch)

    def __str__(self) -> str:
        return " ".join([self.main] + [f"{name}={branch}" for name, branch in self.components])


def parse_branches(cluster, values=None) -> Branches:
    """``--branch`` values: ``B`` for the main repository, ``COMPONENT=B`` for a component with its own.
    None or nothing: the cluster file's branches."""
    if isinstance(values, Branches):
        return values
    values = [values] if isinstance(values, str) else list(values or [])
    main, components = None, {}
    for value in values:
        name, sep, branch = str(value).partition("=")
        if not sep:
            if main is not None:
                raise ConfigError(f"--branch: two branches for the main repository ({main}, {value})")
            main = check_branch(value)
            continue
        component = cluster.component(name)
        if not component.repository:
            raise ConfigError(f"--branch {value}: {name} is built from the main repository, whose branch is "
                              f"given as --branch {branch}")
        if name in components:
            raise ConfigError(f"--branch: two branches for {name}")
        components[name] = check_branch(branch)
    return Branches(main or cluster.build.branch, tuple(sorted(components.items())))


@frozen
class Checkout:
    """One git checkout on the build server, and the components built from it."""
    repository: str
    path: str
    branch: str
    components: tuple  # names


def checkouts(cluster, branches: Branches, components=None) -> list:
    """The checkouts a build of ``components`` (default all) uses: the main one first (it holds
    VERSION), then one per component with its own repository."""
    components = list(cluster.components if components is None else components)
    plan = [Checkout(cluster.build.repository, cluster.build.checkout, branches.main,
                     tuple(c.name for c in components if not c.repository))]
    plan += [Checkout(c.repository, cluster.checkout_of(c), branches.of(c), (c.name,))
             for c in components if c.repository]
    return plan


@frozen
class Job:
    """One component's build: the checkout it is built from, and the values its build arguments may name."""
    component: Component
    checkout: str   # its path on the build server
    values: dict    # version, commit, branch, cluster, component
    cache: bool = True

    @property
    def commit(self) -> str:
        return self.values["commit"]


def jobs(cluster, plan: list, commits: list, base: tuple, components, cache: bool = True) -> list:
    """The build of every component, in ``components``' order, from ``plan``'s checkouts at ``commits``."""
    where = {name: (c, commit) for c, commit in zip(plan, commits) for name in c.components}
    result = []
    for component in components:
        checkout, commit = where[component.name]
        result.append(Job(component, checkout.path, {"version": f"{base[0]}.{base[1]}", "commit": commit,
                                                     "branch": checkout.branch, "cluster": cluster.name,
                                                     "component": component.name}, cache))
    return result


# scheme://user:password@host...: the user-info ends at the last @ before the path.
_USER_INFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")


def without_credentials(url: str) -> str:
    """A repository URL as it is shown and recorded: without the user-info of a ``scheme://`` URL (a token
    there would be printed and kept in every release record). scp-like ``git@host:path`` keeps its
    login name, which holds no password."""
    return _USER_INFO.sub(r"\g<scheme>", url, count=1)


_USER_INFO_IN_TEXT = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s'\"]*@")


def credentials_masked(text: str) -> str:
    """``text`` (git's error output, say) with the user-info of every ``scheme://`` URL in it left
    out, as ``without_credentials`` leaves it out of one URL. Pure."""
    return _USER_INFO_IN_TEXT.sub(r"\g<scheme>", text)


def sources(plan: list, commits: list) -> list:
    """What a release records of its checkouts: each repository (without credentials), branch, commit
    and the components built from it."""
    return [{"repository": without_credentials(c.repository), "branch": c.branch, "commit": commit,
             "components": list(c.components)} for c, commit in zip(plan, commits)]


def checkout_script(repository: str, checkout: str, branch: str) -> str:
    """Make or update the checkout and put it exactly at the branch's tip; prints the commit."""
    ref = f"refs/remotes/origin/{branch}"
    return "\n".join([
        "set -e",
        f"if [ -d {q(checkout + '/.git')} ]; then git -C {q(checkout)} fetch -q --prune origin;",
        f"else mkdir -p {q(checkout.rsplit('/', 1)[0] or '/')} && "
        f"git clone -q --no-checkout -- {q(repository)} {q(checkout)}; fi",
        f"if ! git -C {q(checkout)} rev-parse -q --verify {q(ref)} >/dev/null; then",
        f"  echo {q(f'no branch {branch} in {without_credentials(repository)}')} >&2; exit 3; fi",
        f"git -C {q(checkout)} checkout -q -f --detach {q(ref)}",
        f"git -C {q(checkout)} clean -q -f -d -x",
        f"git -C {q(checkout)} rev-parse HEAD",
    ])


def update_script(plan: list) -> str:
    """Every checkout of ``plan`` at its branch, one after the other; prints one commit per checkout."""
    return "\n".join(f"( {checkout_script(c.repository, c.path, c.branch)}\n) || exit $?" for c in plan)


CHECKED_OUT = "@@air: checked out"
"""The line ``checked_out_script`` prints between the commits and what it read in the main checkout."""
NO_VERSION = 4  # ``checked_out_script``'s exit status when the main checkout has no VERSION file


def checked_out_script(plan: list, version_file: str) -> str:
    """``update_script``, then, in the same command, the ``CHECKED_OUT`` line, the subject (first
    line of the message) of the main checkout's commit and ``version_file``'s text: what a build
    reads next, without a round trip of its own; exits ``NO_VERSION`` when that file is missing."""
    main = plan[0].path
    return "\n".join([update_script(plan), f"echo {q(CHECKED_OUT)}", f"git -C {q(main)} log -1 --format=%s HEAD",
                      f"if [ -e {q(version_file)} ]; then cat {q(version_file)}; else exit {NO_VERSION}; fi"])


def parse_checked_out(printed: str, checkouts: int) -> tuple:
    """(the commits, one per checkout; the main commit's subject; VERSION's text) from what
    ``checked_out_script`` printed. Pure."""
    commits, _, rest = printed.partition(f"{CHECKED_OUT}\n")
    subject, _, version_text = rest.partition("\n")
    return commits.split()[-checkouts:], subject, version_text


def commits_command(paths) -> str:
    """The commit each checkout is at, one line each (``none`` for a missing checkout)."""
    return "; ".join(f"git -C {q(path)} rev-parse HEAD 2>/dev/null || echo {NO_COMMIT}" for path in paths)


def prepare_script(checkout: str, component) -> str:
    """Run the component's prepare command in its checkout under its deadline; every line of its
    output goes to standard error prefixed by the component's name; exits with the command's status."""
    prefix = f"  {component.name}: "
    return "\n".join([
        f"cd {q(checkout)} || exit 1",
        f"status=$( ( ( timeout -k 10 {int(component.prepare_timeout)} sh -c {q(component.prepare)} "
        f"</dev/null 2>&1 3>&-; echo $? >&3 ) | sed -u {q('s/^/' + prefix + '/')} >&2 ) 3>&1 )",
        'exit "$status"',
    ])


def context_command(checkout: str, source: str) -> str:
    """A tar of one component's build context (without git's own folder), on standard output."""
    folder = checkout if source == "." else f"{checkout}/{source}"
    return f"tar -C {q(folder)} --exclude=./.git -c ."


def candidate(cluster, component: str, commit: str) -> str:
    return f"{cluster.registry.address}/{cluster.image(component)}:{CANDIDATE}{commit[:12]}"


def build_args(component, values: dict) -> dict:
    """The component's build arguments with ``{version}``, ``{commit}``, ... replaced."""
    return {name: template.format(**values) for name, template in component.args}


def build_options(cluster, job: Job) -> dict:
    """What ``APIClient.build`` is given besides the context (``job.cache`` False: rebuild every step)."""
    component = job.component
    options = {"custom_context": True, "tag": candidate(cluster, component.name, job.commit),
               "dockerfile": relative_to(component.source, component.dockerfile),
               "rm": True, "forcerm": True, "decode": True}
    if not job.cache:
        options["nocache"] = True
    if component.args:
        options["buildargs"] = build_args(component, job.values)
    if component.target:
        options["target"] = component.target
    return options


def build_inputs(job: Job) -> str:
    """A digest of everything ``job``'s image is built from, as far as this side knows: the
    component's build settings (context, Dockerfile, ignore file, build arguments, target, prepare
    command, repository and branch) and its values (commit, VERSION's base, cluster). Equal digests:
    the same build, save for base images changed under the same tag (``deploy --rebuild``). Pure."""
    c = job.component
    settings = [c.source, c.dockerfile, c.ignore, [list(a) for a in c.args], c.target, c.prepare, c.repository,
                c.branch]
    text = json.dumps([settings, job.values], sort_keys=True)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def ignore_patterns(text: str) -> list:
    """The rules of an ignore file (``.dockerignore`` syntax): one per line, ``#`` comments skipped."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def _member_path(name: str) -> str:
    return os.path.normpath(name)  # "./a/b" -> "a/b", "./" -> "."


def ignore_file_of(component, paths) -> Optional[str]:
    """The ignore file, as a path in the context: the component's own (which must be there), else
    <Dockerfile>.dockerignore, else .dockerignore, when present among ``paths``."""
    if component.ignore:
        path = relative_to(component.source, component.ignore)
        if path not in paths:
            raise ConfigError(f"component {component.name}: ignore file {component.ignore} is not in its checkout")
        return path
    dockerfile = relative_to(component.source, component.dockerfile)
    return next((p for p in (f"{dockerfile}.dockerignore", ".dockerignore") if p in paths), None)


def filter_context(context: bytes, patterns: list, keep: str) -> bytes:
    """The tar ``context`` without what ``patterns`` exclude. ``keep`` (the Dockerfile) always stays,
    like the folders holding anything that stays; entries keep their headers, so an unchanged
    source gives the same files to the build cache."""
    from docker.utils.build import PatternMatcher  # docker-py's .dockerignore rules; loaded by a build only
    matcher = PatternMatcher(patterns)
    with tarfile.open(fileobj=io.BytesIO(context)) as source:
        members = source.getmembers()
        kept = {_member_path(m.name) for m in members
                if _member_path(m.name) == keep or _member_path(m.name) == "." or
                not matcher.matches(_member_path(m.name))}
        # a folder excluded by a rule whose exceptions bring back something inside it stays too
        for path in list(kept):
            while path not in (".", ""):
                path = os.path.dirname(path) or "."
                kept.add(path)
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=source.format) as target:
            for member in members:
                if _member_path(member.name) in kept:
                    target.addfile(member, source.extractfile(member) if member.isfile() else None)
    return out.getvalue()


def build_context(context: bytes, component) -> bytes:
    """The tar streamed from the build server, with the component's ignore file applied."""
    with tarfile.open(fileobj=io.BytesIO(context)) as tar:
        members = {_member_path(m.name): m for m in tar.getmembers()}
        ignore = ignore_file_of(component, members)
        if ignore is None:
            return context
        text = tar.extractfile(members[ignore]).read().decode("utf-8", "replace")  # type: ignore[union-attr]
    return filter_context(context, ignore_patterns(text),
                          relative_to(component.source, component.dockerfile) or component.dockerfile)


def step_of(line: str) -> str:
    """``Step 3/5 : RUN make`` -> ``step 3/5 (RUN make)``, short enough for an error line."""
    number, _, instruction = line[len("Step "):].partition(" : ")
    instruction = " ".join(instruction.split())
    if len(instruction) > 60:
        instruction = instruction[:57] + "..."
    return f"step {number} ({instruction})"


def failure_line(text: str) -> str:
    """The last non-empty line of an error text."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def subject_command(checkout: str, commit: str) -> str:
    """Prints the subject (first line) of ``commit``'s message in ``checkout``: a deploy's default
    message. Pure."""
    return f"git -C {q(checkout)} log -1 --format=%s {q(commit)}"
