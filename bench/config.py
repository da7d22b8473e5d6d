"""settings.apply and secrets.apply timings on the sandbox's installed `local` cluster, as an
operator runs them (whole `fab` commands): with nothing to change, with every setting changed, and
rotating one secret of air_backend (restarted on every machine, one at a time, gated). Works on a
copy of clusters/local.yaml and of its secrets folder; puts the real file's settings and secrets
back at the end. Also prints the keys written per cluster.

Run from the project root, with the sandbox up and the cluster installed:
    python bench/config.py [--runs N]
Prints figures; asserts nothing.
"""
import argparse
import secrets
import shutil
import tempfile
from pathlib import Path

import yaml

from common import ROOT, fab, summary  # first: it puts the project root on sys.path
from sandbox import testbed as sb
from tasks.model import cluster as cluster_config
from tasks.model import state
from tasks.net.session import session


def line(what, figures):
    print(summary(what, figures, width=58, note=f"{len(figures)} runs"), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="air-bench-config-"))
    try:
        shutil.copytree(sb.STATE / "secrets", folder / "secrets")
        data = yaml.safe_load((ROOT / "clusters" / "local.yaml").read_text())
        data.update(include=str(sb.STATE / "cluster.yaml"), secrets=str(folder / "secrets"))
        env = {"AIR_CLUSTERS_DIR": str(folder)}

        def save():
            (folder / "local.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        save()
        unchanged, changed, noop, rotate = [], [], [], []
        for run in range(args.runs):
            unchanged.append(fab("settings.apply", "--cluster", "local", env=env).seconds)
            data["settings"] = {k: f"{v}-{run}" if isinstance(v, str) else v for k, v in data["settings"].items()}
            save()
            changed.append(fab("settings.apply", "--cluster", "local", env=env).seconds)
            noop.append(fab("secrets.apply", "--cluster", "local", env=env).seconds)
            (folder / "secrets" / "session_key").write_text(secrets.token_urlsafe(24) + "\n")
            rotate.append(fab("secrets.apply", "--cluster", "local", env=env).seconds)
        line("settings.apply, nothing to change", unchanged)
        texts = sum(1 for v in data["settings"].values() if isinstance(v, str))
        line(f"settings.apply, {texts} of {len(data['settings'])} keys changed (v3 and v2)", changed)
        line("secrets.apply, nothing to change", noop)
        line("secrets.apply, one air_backend secret on 3 machines", rotate)
        cluster = cluster_config.load("local")
        with session(cluster) as s:
            keys = sorted(s.etcd.get_prefix(state.prefix(cluster)))
        history = [k for k in keys if k.startswith(state.history_prefix(cluster))]
        print(f"keys under {state.prefix(cluster)} in etcd ({len(keys)}; {len(history)} of them history "
              f"records under {state.history_prefix(cluster)}):")
        for key in keys:
            if key not in history:
                print(f"  {key}")
    finally:
        fab("settings.apply", "--cluster", "local")
        fab("secrets.apply", "--cluster", "local")
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
