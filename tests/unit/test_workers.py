"""A test run's sandboxes side by side: each worker's prefix, subnet, state and cluster files."""
from pathlib import Path

import pytest

from sandbox import workers


def test_outside_xdist_the_base_sandbox_is_used_as_it_is():
    assert workers.number(None) == 0
    assert workers.environment(None, {"AIR_SANDBOX_PREFIX": "air-x"}) == {}


def test_each_worker_gets_its_own_prefix_subnet_state_and_clusters_folder():
    env = {"AIR_SANDBOX_PREFIX": "air-sandbox", "AIR_SANDBOX_SUBNET": "10.213.7", "AIR_SANDBOX_STATE": "/ci/.sandbox"}
    assert workers.environment("gw0", env) == {
        "AIR_SANDBOX_PREFIX": "air-sandbox-w1", "AIR_SANDBOX_SUBNET": "10.213.39",
        "AIR_SANDBOX_STATE": "/ci/.sandbox/w1", "AIR_CLUSTERS_DIR": "/ci/.sandbox/w1/clusters"}
    assert workers.environment("gw2", env)["AIR_SANDBOX_SUBNET"] == "10.213.103"


def test_the_defaults_are_the_sandboxes_own():
    derived = workers.environment("gw1", {})
    assert derived["AIR_SANDBOX_PREFIX"] == "air-sandbox-w2" and derived["AIR_SANDBOX_SUBNET"] == "10.213.71"
    assert derived["AIR_SANDBOX_STATE"] == str(workers.ROOT / ".sandbox" / "w2")


def test_two_runs_on_different_base_subnets_never_share_a_24():
    """CI's default run and another checkout's (AIR_SANDBOX_SUBNET 10.213.9), each with the most workers."""
    ours, theirs = ({workers.subnet(base, k) for k in range(workers.MAX_WORKERS + 1)} for base in ("10.213.7", "10.213.9"))
    assert len(ours) == len(theirs) == workers.MAX_WORKERS + 1
    assert not ours & theirs


@pytest.mark.parametrize("base, k", [("10.213.40", 1), ("10.213.7", 8), ("10.213", 1), ("10.213.x", 1)])
def test_a_subnet_that_would_leave_the_scheme_is_refused(base, k):
    with pytest.raises(ValueError):
        workers.subnet(base, k)


def test_an_unexpected_worker_id_is_refused():
    with pytest.raises(ValueError):
        workers.number("popen-1")


def test_a_workers_cluster_files_include_its_own_state(tmp_path):
    state = Path("/ci/.sandbox/w1")
    source = tmp_path / "clusters"
    source.mkdir()
    (source / "local.yaml").write_text("# the sandbox\ninclude: ../.sandbox/cluster.yaml\nnamespace: aircloak\n")
    (source / "air_prod.yaml").write_text("namespace: aircloak\n")
    (source / "README.md").write_text("not a cluster file\n")
    workers.write_clusters(state, tmp_path / "copy", source)
    assert (tmp_path / "copy" / "local.yaml").read_text() == \
        "# the sandbox\ninclude: /ci/.sandbox/w1/cluster.yaml\nnamespace: aircloak\n"
    assert (tmp_path / "copy" / "air_prod.yaml").read_text() == "namespace: aircloak\n"
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["air_prod.yaml", "local.yaml"]


def test_the_projects_cluster_files_all_name_the_sandbox_state_the_way_the_copy_rewrites():
    """Every include of clusters/ that names the sandbox's state is one the copy points elsewhere."""
    for path in (workers.ROOT / "clusters").glob("*.yaml"):
        copied = workers.cluster_file(path.read_text(), Path("/elsewhere"))
        assert "../.sandbox" not in copied, path.name


def test_worker_ids_are_xdists():
    assert [workers.number(workers.worker_id(k)) for k in (1, 2, 3)] == [1, 2, 3]


def test_the_sandboxes_brought_up_ahead_are_the_workers_own(mocker, tmp_path):
    """``on_each("up", 2)``: `fab sandbox.up` in the shape the tests use, once per worker, in that
    worker's environment (the one tests/conftest.py gives it), after its cluster files are written."""
    started = []
    mocker.patch.object(workers.subprocess, "Popen", side_effect=lambda args, cwd, env: started.append((args, env))
                        or mocker.Mock(wait=mocker.Mock(return_value=0)))
    env = {"AIR_SANDBOX_PREFIX": "air-x", "AIR_SANDBOX_SUBNET": "10.213.9", "AIR_SANDBOX_STATE": str(tmp_path)}
    mocker.patch.dict(workers.os.environ, env)
    assert workers.on_each("up", 2) == 0
    assert [args[3:] for args, _ in started] == [["sandbox.up", "--machines", "3", "--spares", "2", "--no-second"]] * 2
    assert [args[1:3] for args, _ in started] == [["-m", "fabric"]] * 2
    for k, (_, given) in enumerate(started, 1):
        assert {name: given[name] for name in workers.environment(workers.worker_id(k), env)} == \
            workers.environment(workers.worker_id(k), env)
        assert (tmp_path / f"w{k}" / "clusters" / "local.yaml").is_file()


def test_a_failed_bring_up_is_counted(mocker):
    mocker.patch.dict(workers.os.environ, {"AIR_SANDBOX_SUBNET": "10.213.9"})  # not an xdist worker's own
    codes = iter([0, 1, 1])
    mocker.patch.object(workers.subprocess, "Popen", side_effect=lambda args, cwd, env:
                        mocker.Mock(wait=mocker.Mock(return_value=next(codes))))
    assert workers.on_each("down", 3) == 2


def test_outside_xdist_nothing_is_prepared(tmp_path):
    assert workers.prepared(None, {"AIR_SANDBOX_STATE": str(tmp_path)}) == {}
    assert list(tmp_path.iterdir()) == []


def test_the_modules_that_share_the_second_cluster_are_one_unit_of_work_the_others_one_each():
    from conftest import SECOND_CLUSTER, ModulesScheduling
    scope = ModulesScheduling._split_scope  # it reads nothing of the scheduler
    assert scope(None, "tests/integration/test_deploy.py::test_a[x]") == "tests/integration/test_deploy.py"
    assert {scope(None, f"tests/integration/{module}.py::test_a") for module in SECOND_CLUSTER} == {"second cluster"}
