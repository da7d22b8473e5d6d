"""The build server's command lines, the build's options and context, and branch names refused
before anything runs."""
import io
import subprocess
import tarfile
from dataclasses import replace

import pytest

from tasks.commands.build_scripts import (
    Branches,
    Checkout,
    Job,
    build_context,
    build_inputs,
    build_options,
    check_branch,
    checkout_script,
    checkouts,
    commits_command,
    context_command,
    credentials_masked,
    filter_context,
    ignore_patterns,
    jobs,
    parse_branches,
    prepare_script,
    step_of,
    update_script,
    sources,
    without_credentials,
)
from tasks.model.cluster import load
from tasks.model.errors import ConfigError


def test_checkout_script_clones_or_fetches_and_detaches_at_the_branch_tip():
    assert checkout_script("git@example.org:air.git", "/aircloak/air_stage/air", "release/2.1") == "\n".join([
        "set -e",
        "if [ -d /aircloak/air_stage/air/.git ]; then git -C /aircloak/air_stage/air fetch -q --prune origin;",
        "else mkdir -p /aircloak/air_stage && "
        "git clone -q --no-checkout -- git@example.org:air.git /aircloak/air_stage/air; fi",
        "if ! git -C /aircloak/air_stage/air rev-parse -q --verify refs/remotes/origin/release/2.1 >/dev/null; then",
        "  echo 'no branch release/2.1 in git@example.org:air.git' >&2; exit 3; fi",
        "git -C /aircloak/air_stage/air checkout -q -f --detach refs/remotes/origin/release/2.1",
        "git -C /aircloak/air_stage/air clean -q -f -d -x",
        "git -C /aircloak/air_stage/air rev-parse HEAD",
    ])


def test_context_command_quotes_the_folder():
    assert context_command("/srv/a b", "components/router") == \
        "tar -C '/srv/a b/components/router' --exclude=./.git -c ."


def test_context_command_of_the_checkouts_root():
    assert context_command("/srv/air", ".") == "tar -C /srv/air --exclude=./.git -c ."


@pytest.mark.parametrize("branch", ["master", "release/2.1", "feature/x_y-z.3", "a" * 200])
def test_plain_branch_names_pass(branch):
    assert check_branch(branch) == branch


@pytest.mark.parametrize("branch", [
    "x;touch /tmp/pwned", "$(id)", "a b", "-rf", "../up", "a..b", "a//b", "dir/", "x.lock", "a/.hidden",
    "", "a" * 201, "`id`", "a|b", "a\nb", None,
])
def test_odd_branch_names_are_refused_with_one_line(branch):
    with pytest.raises(ConfigError) as error:
        check_branch(branch)
    assert "\n" not in str(error.value).replace(repr(branch), "")
    assert "not a valid branch name" in str(error.value)


# ---------------------------------------------------------------- branches and checkouts

COMPONENTS_YAML = """\
namespace: aircloak
ssh: {key: id_ed25519, known_hosts: known_hosts}
build:
  host: build.example.org
  repository: git@example.org:air.git
  checkout: /srv/{cluster}/air
registry: {address: "registry.example.org:5000", credentials: registry.yaml}
balancer: {host: 10.0.0.100}
machines: [10.0.0.1, 10.0.0.2, 10.0.0.3]
components:
  - {name: web, port: 8080}
  - name: app
    port: 8081
    source: .
    dockerfile: images/app/Dockerfile
    args: {VERSION: "{version}", WHERE: "{cluster}/{component}", FROM_COMMIT: "{commit}@{branch}"}
    target: runtime
    prepare: make generated
    prepare_timeout: 45
  - {name: site, port: 8082, repository: "git@example.org:site.git", branch: develop, source: .}
secrets: secrets
"""


@pytest.fixture
def built(tmp_path):
    """A cluster `prod` whose components use every build field."""
    (tmp_path / "prod.yaml").write_text(COMPONENTS_YAML)
    return load("prod", directory=tmp_path)


def test_without_branches_every_checkout_is_at_the_cluster_files_branch(built):
    assert parse_branches(built) == Branches("master")
    assert checkouts(built, parse_branches(built)) == [
        Checkout("git@example.org:air.git", "/srv/prod/air", "master", ("web", "app")),
        Checkout("git@example.org:site.git", "/srv/prod/air-site", "develop", ("site",)),
    ]


def test_branch_values_split_between_the_main_repository_and_components(built):
    branches = parse_branches(built, ["feature-y", "site=feature-x"])
    assert branches == Branches("feature-y", (("site", "feature-x"),))
    assert str(branches) == "feature-y site=feature-x"
    assert [(c.path, c.branch) for c in checkouts(built, branches)] == \
        [("/srv/prod/air", "feature-y"), ("/srv/prod/air-site", "feature-x")]
    # a component branch alone leaves the main repository on its default
    assert parse_branches(built, ["site=feature-x"]).main == "master"
    assert parse_branches(built, "release/2") == Branches("release/2")


def test_checkouts_of_one_component_keep_the_main_one_for_version(built):
    assert checkouts(built, Branches("master"), [built.component("site")]) == [
        Checkout("git@example.org:air.git", "/srv/prod/air", "master", ()),
        Checkout("git@example.org:site.git", "/srv/prod/air-site", "develop", ("site",)),
    ]


@pytest.mark.parametrize("values, message", [
    (["a", "b"], "--branch: two branches for the main repository (a, b)"),
    (["site=a", "site=b"], "--branch: two branches for site"),
    (["web=x"], "--branch web=x: web is built from the main repository, whose branch is given as --branch x"),
    (["nope=x"], "no component 'nope'"),
    (["site=x;id"], "branch 'x;id' is not a valid branch name"),
    (["$(id)"], "branch '$(id)' is not a valid branch name"),
])
def test_bad_branch_values_are_refused_before_anything_runs(built, values, message):
    with pytest.raises(ConfigError) as error:
        parse_branches(built, values)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_update_script_runs_every_checkout_script_and_stops_at_the_first_failure(built):
    plan = checkouts(built, Branches("master"))
    assert update_script(plan) == "\n".join([
        f"( {checkout_script('git@example.org:air.git', '/srv/prod/air', 'master')}\n) || exit $?",
        f"( {checkout_script('git@example.org:site.git', '/srv/prod/air-site', 'develop')}\n) || exit $?",
    ])


def test_checked_out_script_reads_the_subject_and_version_in_the_same_command(built, tmp_path):
    from tasks.commands.build_scripts import CHECKED_OUT, NO_VERSION, checked_out_script, parse_checked_out
    source = tmp_path / "air.git"

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@x", *args], check=True)
    git("init", "-q", "-b", "master", str(source))
    git("-C", str(source), "commit", "-q", "--allow-empty", "-m", "Start")
    plan = [replace(checkouts(built, Branches("master"))[0], repository=str(source), path=str(tmp_path / "air"))]
    version_file = str(tmp_path / "air" / "VERSION")
    script = checked_out_script(plan, version_file)
    assert script == "\n".join([update_script(plan), f"echo '{CHECKED_OUT}'",
                                 f"git -C {plan[0].path} log -1 --format=%s HEAD",
                                 f"if [ -e {version_file} ]; then cat {version_file}; else exit {NO_VERSION}; fi"])
    missing = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert missing.returncode == NO_VERSION
    (source / "VERSION").write_text("1.4\n")
    git("-C", str(source), "add", "VERSION")
    git("-C", str(source), "commit", "-q", "-m", "Fix the router's 'drain'\n\nbody")
    ran = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    head = subprocess.run(["git", "-C", plan[0].path, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert parse_checked_out(ran.stdout, 1) == ([head], "Fix the router's 'drain'", "1.4\n")


def test_commits_command_reads_every_checkout():
    assert commits_command(["/srv/a b", "/srv/c"]) == (
        "git -C '/srv/a b' rev-parse HEAD 2>/dev/null || echo none; "
        "git -C /srv/c rev-parse HEAD 2>/dev/null || echo none")


# ---------------------------------------------------------------- prepare

def test_prepare_script_runs_in_the_checkout_under_its_deadline_with_prefixed_output(built):
    assert prepare_script("/srv/prod/air", built.component("app")) == "\n".join([
        "cd /srv/prod/air || exit 1",
        "status=$( ( ( timeout -k 10 45 sh -c 'make generated' </dev/null 2>&1 3>&-; echo $? >&3 )"
        " | sed -u 's/^/  app: /' >&2 ) 3>&1 )",
        'exit "$status"',
    ])


@pytest.mark.parametrize("command, status, lines", [
    ("echo one; echo two >&2; exit 4", 4, ["  app: one", "  app: two"]),
    ("touch made-here; echo fine", 0, ["  app: fine"]),
    ("sleep 5", 124, []),
])
def test_prepare_script_keeps_the_commands_status_and_prefixes_every_line(tmp_path, built, command, status, lines):
    component = replace(built.component("app"), prepare=command, prepare_timeout=1)
    proc = subprocess.run(["sh", "-c", prepare_script(str(tmp_path), component)], capture_output=True, text=True,
                          timeout=30)
    assert (proc.returncode, proc.stderr.splitlines(), proc.stdout) == (status, lines, "")
    assert (tmp_path / "made-here").exists() == (status == 0)


# ---------------------------------------------------------------- build options

def test_every_component_is_built_from_its_checkouts_commit_with_the_values_of_its_arguments(built):
    plan = checkouts(built, Branches("master", (("site", "feature-x"),)))
    assert jobs(built, plan, ["a" * 40, "b" * 40], (1, 4), built.components) == [
        Job(built.component("web"), "/srv/prod/air", {"version": "1.4", "commit": "a" * 40, "branch": "master",
                                                      "cluster": "prod", "component": "web"}),
        Job(built.component("app"), "/srv/prod/air", {"version": "1.4", "commit": "a" * 40, "branch": "master",
                                                      "cluster": "prod", "component": "app"}),
        Job(built.component("site"), "/srv/prod/air-site", {"version": "1.4", "commit": "b" * 40,
                                                            "branch": "feature-x", "cluster": "prod",
                                                            "component": "site"}),
    ]
    assert [j.cache for j in jobs(built, plan, ["a" * 40, "b" * 40], (1, 4), built.components, cache=False)] == \
        [False] * 3


def job(built, name, commit="c0ffee" * 6, cache=True):
    values = {"version": "1.4", "commit": commit, "branch": "master", "cluster": "prod", "component": name}
    return Job(built.component(name), "/srv/prod/air", values, cache)


def test_build_options_carry_dockerfile_arguments_and_target(built):
    assert build_options(built, job(built, "app")) == {
        "custom_context": True, "tag": "registry.example.org:5000/aircloak/prod_app:candidate-c0ffeec0ffee",
        "dockerfile": "images/app/Dockerfile", "rm": True, "forcerm": True, "decode": True,
        "buildargs": {"VERSION": "1.4", "WHERE": "prod/app", "FROM_COMMIT": "c0ffee" * 6 + "@master"},
        "target": "runtime",
    }


def test_build_inputs_change_with_any_build_setting_or_value_and_only_then(built):
    app = job(built, "app")
    same = build_inputs(app)
    assert same.startswith("sha256:") and build_inputs(job(built, "app")) == same
    assert build_inputs(job(built, "app", commit="d" * 40)) != same
    assert build_inputs(replace(app, values={**app.values, "version": "1.5"})) != same
    for field, value in (("prepare", "make other"), ("target", "builder"), ("args", (("VERSION", "{commit}"),)),
                         ("dockerfile", "Dockerfile"), ("source", "images"), ("ignore", "x.ignore")):
        assert build_inputs(replace(app, component=replace(app.component, **{field: value}))) != same, field
    # What does not go into the image leaves them alone.
    assert build_inputs(replace(app, component=replace(app.component, port=9999, health="/other"))) == same
    assert build_inputs(replace(app, cache=False)) == same


def test_build_options_of_a_plain_component_have_no_arguments_or_target(built):
    options = build_options(built, job(built, "web"))
    assert options["dockerfile"] == "Dockerfile" and "buildargs" not in options and "target" not in options


@pytest.mark.parametrize("line, step", [
    ("Step 3/5 : RUN sh /src/build-release /src /release", "step 3/5 (RUN sh /src/build-release /src /release)"),
    ("Step 1/2 : FROM  air-sandbox/base:1 AS builder", "step 1/2 (FROM air-sandbox/base:1 AS builder)"),
    ("Step 2/2 : RUN " + "x" * 100, "step 2/2 (RUN " + "x" * 53 + "...)"),
])
def test_step_names_the_dockerfile_step(line, step):
    assert step_of(line) == step


# ---------------------------------------------------------------- the context and its ignore file

def tar_of(files: dict) -> bytes:
    """A tar as `tar -C DIR -c .` makes it: ./ first, folders before their files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        folders = sorted({"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)})
        for folder in ["."] + folders:
            info = tarfile.TarInfo("./" if folder == "." else f"./{folder}")
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for path, content in sorted(files.items()):
            info = tarfile.TarInfo(f"./{path}")
            info.size, info.mode, info.mtime, info.uid = len(content), 0o644, 1234567890, 1000
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def names(context: bytes) -> list:
    with tarfile.open(fileobj=io.BytesIO(context)) as tar:
        return [m.name for m in tar.getmembers()]


ROOT_CONTEXT = {
    "VERSION": b"1.0\n",
    "images/app/Dockerfile": b"FROM base\n",
    "images/app/Dockerfile.dockerignore": b"# only the app\n*\n!images/app\n!src/app\nimages/app/*.md\n\n",
    "images/app/NOTES.md": b"notes\n",
    "images/web/Dockerfile": b"FROM base\n",
    "src/app/main.c": b"int main;\n",
    "src/web/main.c": b"int web;\n",
}


def test_ignore_patterns_skip_comments_and_blank_lines():
    assert ignore_patterns("# a comment\n*\n\n  !keep  \nx/*.md\n") == ["*", "!keep", "x/*.md"]


def test_the_dockerfiles_own_ignore_file_is_found_and_applied(built):
    context = build_context(tar_of(ROOT_CONTEXT), built.component("app"))
    assert names(context) == [".", "./images", "./images/app", "./src", "./src/app",
                              "./images/app/Dockerfile", "./images/app/Dockerfile.dockerignore", "./src/app/main.c"]


def test_entries_that_stay_keep_their_headers_and_content(built):
    context = build_context(tar_of(ROOT_CONTEXT), built.component("app"))
    with tarfile.open(fileobj=io.BytesIO(context)) as tar:
        main = tar.getmember("./src/app/main.c")
        assert (main.mtime, main.uid, main.mode, tar.extractfile(main).read()) == \
            (1234567890, 1000, 0o644, b"int main;\n")


def test_the_dockerfile_stays_even_when_the_ignore_file_excludes_it(built):
    context = filter_context(tar_of(ROOT_CONTEXT), ["*"], "images/app/Dockerfile")
    assert names(context) == [".", "./images", "./images/app", "./images/app/Dockerfile"]


def test_a_context_without_ignore_file_is_sent_as_it_came(built):
    raw = tar_of({"Dockerfile": b"FROM base\n", "index.html": b"hi\n"})
    assert build_context(raw, built.component("site")) is raw


def test_dockerignore_at_the_root_of_the_context_is_the_fallback(built):
    raw = tar_of({"Dockerfile": b"FROM base\n", ".dockerignore": b"*.md\n", "index.html": b"hi\n", "a.md": b"x"})
    assert names(build_context(raw, built.component("site"))) == [".", "./.dockerignore", "./Dockerfile",
                                                                  "./index.html"]


def test_a_named_ignore_file_that_is_missing_is_a_config_error(built):
    component = replace(built.component("app"), ignore="images/app/missing.ignore")
    with pytest.raises(ConfigError) as error:
        build_context(tar_of(ROOT_CONTEXT), component)
    assert str(error.value) == "component app: ignore file images/app/missing.ignore is not in its checkout"


def test_build_options_without_cache_rebuild_every_step(built):
    assert build_options(built, job(built, "web", cache=False))["nocache"] is True
    assert "nocache" not in build_options(built, job(built, "web"))


# ---------------------------------------------------------------- a repository URL's credentials stay out of sight

@pytest.mark.parametrize("url, shown", [
    ("https://user:token@git.example.org/air.git", "https://git.example.org/air.git"),
    ("https://token@git.example.org:8443/air.git", "https://git.example.org:8443/air.git"),
    ("ssh://git:pw@[fd00::1]:2222/air.git", "ssh://[fd00::1]:2222/air.git"),
    ("https://u:p@ss@git.example.org/a@b.git", "https://git.example.org/a@b.git"),
    ("https://git.example.org/air.git", "https://git.example.org/air.git"),
    ("git@example.org:air.git", "git@example.org:air.git"),  # scp-like: a login name, no password
    ("/srv/git/air.git", "/srv/git/air.git"),
])
def test_without_credentials(url, shown):
    assert without_credentials(url) == shown


def test_the_checkout_script_and_the_recorded_sources_name_the_repository_without_credentials():
    url = "https://user:token@git.example.org/air.git"
    script = checkout_script(url, "/aircloak/stage/air", "main")
    assert "  echo 'no branch main in https://git.example.org/air.git' >&2; exit 3; fi" in script.splitlines()
    assert f"git clone -q --no-checkout -- {url} /aircloak/stage/air; fi" in script  # git itself needs them
    plan = [Checkout(url, "/aircloak/stage/air", "main", ("web",))]
    assert sources(plan, ["c" * 40]) == [{"repository": "https://git.example.org/air.git", "branch": "main",
                                          "commit": "c" * 40, "components": ["web"]}]


def test_git_errors_are_shown_without_the_credentials_of_any_url():
    said = ("fatal: unable to access 'https://deploy:t0ken@git.example.org/air.git/': Could not resolve host\n"
            "remote: see https://git.example.org/help and ssh://u:p@h:22/x")
    assert credentials_masked(said) == (
        "fatal: unable to access 'https://git.example.org/air.git/': Could not resolve host\n"
        "remote: see https://git.example.org/help and ssh://h:22/x")
    assert credentials_masked("git@host:path/repo.git stays") == "git@host:path/repo.git stays"


def test_reusable_are_the_components_whose_build_inputs_are_the_records():
    from tasks.model.release import Release
    from tasks.runbooks.publish import reusable
    digest = {c: "sha256:" + h * 64 for c, h in (("router", "1"), ("static_website", "2"), ("air_backend", "3"))}
    recorded = {"inputs": {"router": "in-r", "static_website": "in-s1", "air_backend": "in-b"},
                "components": {c: {"version": "1.0.0", "digest": d} for c, d in digest.items()}}
    release = Release.from_dict(recorded)
    meta = {"inputs": {"router": "in-r", "static_website": "in-s2", "air_backend": "in-b", "extra": "in-x"}}
    assert reusable(release, recorded["inputs"], meta) == {"router": digest["router"],
                                                           "air_backend": digest["air_backend"]}
    assert reusable(release, {}, meta) == {}  # recorded before inputs were kept


def test_a_build_stream_is_followed_to_its_image_or_to_the_engine_s_error(capsys):
    from tasks.runbooks.build import BuildStream
    made = BuildStream("web")
    made.follow([{"stream": "Step 1/2 : FROM base\n"}, {"stream": " ---> abc\n\n"},
                 {"stream": "Step 2/2 : COPY . /app/\n"}, {"aux": {"ID": "sha256:" + "1" * 64}}])
    assert (made.log, made.step, made.image_id, made.refused) == (
        ["Step 1/2 : FROM base", " ---> abc", "Step 2/2 : COPY . /app/"], "step 2/2 (COPY . /app/)",
        "sha256:" + "1" * 64, None)
    assert capsys.readouterr().err == "  web: Step 1/2 : FROM base\n  web: Step 2/2 : COPY . /app/\n"
    refused = BuildStream("web")
    refused.follow(iter([{"stream": "Step 1/2 : RUN false\n"}, {"error": "The command returned 1"},
                         {"stream": "never read\n"}]))
    assert (refused.step, refused.image_id, refused.refused) == ("step 1/2 (RUN false)", None, "The command returned 1")
    assert str(refused.failed(refused.refused)) == "build of web failed at step 1/2 (RUN false): The command returned 1"
