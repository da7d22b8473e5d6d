"""Sandbox timings: a cold `sandbox.up` (new containers; with --no-image-cache the machine image is
rebuilt from Debian packages too), a warm one (everything already up), and `sandbox.down`.

Run from the project root: python bench/sandbox.py [--machines N] [--no-image-cache]
It replaces whatever sandbox of the same name is up (set AIR_SANDBOX_PREFIX/AIR_SANDBOX_SUBNET
to measure beside another one). Prints figures; asserts nothing.
"""
import argparse

from common import COLUMN, timed  # first: it puts the project root on sys.path
from sandbox import testbed as sandbox


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--machines", type=int, default=3)
    parser.add_argument("--spares", type=int, default=0)
    parser.add_argument("--no-image-cache", action="store_true", help="rebuild the machine image first")
    args = parser.parse_args()
    sandbox.tear_down()
    if args.no_image_cache:
        sandbox.docker("image", "rm", "-f", sandbox.machine_image.image_tag(), check=False)
    label = "cold up (image built)" if args.no_image_cache else "cold up (image cached)"
    timed(f"{label}, {args.machines} machines", sandbox.bring_up, args.machines, args.spares, form=COLUMN)
    timed(f"warm up, {args.machines} machines", sandbox.bring_up, args.machines, args.spares, form=COLUMN)
    timed("down", sandbox.tear_down, form=COLUMN)
    timed(f"up after down, {args.machines} machines", sandbox.bring_up, args.machines, args.spares, form=COLUMN)


if __name__ == "__main__":
    main()
