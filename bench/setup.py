"""setup-cluster wall time for 3 machines and for 6 (target: 6 take at most 1.3 times as long as 3).

Run from the project root: python bench/setup.py
It brings the sandbox up with 6 machines (and no spares), builds and pushes the sample app,
then for each size resets the machines to freshly prepared and times `install.setup` alone.
Set AIR_SANDBOX_PREFIX/AIR_SANDBOX_SUBNET (and run from a copy of the project) to measure
beside another sandbox. Prints figures; asserts nothing.
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sandbox import testbed as sandbox  # noqa: E402
from tasks import build, cluster, install, push  # noqa: E402
from tasks.session import session  # noqa: E402


def main():
    info = sandbox.bring_up(6, 0)
    local = cluster.load("local")
    with session(local, etcd=False) as s:
        built = build.build_all(s.ex, local.build.host, local.build.branch)
        push.push_all(s.ex, local.build.host, built["images"])
    machines = [m["address"] for m in info["machines"]]
    times = {}
    for size in (3, 6):
        sandbox.reset_machines(machines)
        chosen = machines[:size]
        started = time.monotonic()
        with session(local.with_machines(chosen), etcd=False) as s:
            install.setup(s, chosen)
        times[size] = time.monotonic() - started
        print(f"setup-cluster, {size} machines: {times[size]:6.1f} s", flush=True)
    print(f"ratio 6/3: {times[6] / times[3]:.2f} (target <= 1.3)")
    sandbox.reset_machines(machines)


if __name__ == "__main__":
    main()
