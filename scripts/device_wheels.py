"""`make device-wheels`: the wheels scripts/device_check.sh installs on the lent GPU machine.

The device machine reaches no package registry; its image has Python 3.12, torch with CUDA and
the packages KINDS.md lists, but not Hydra, MLflow, MuJoCo, Gymnasium, Minari or submitit.
This downloads scripts/device_requirements.txt (pinned, dependencies named one by one) as
manylinux x86-64 wheels for that Python into an ignored folder, builds the one pure-Python
package PyPI has only as an sdist (antlr4-python3-runtime, Hydra's parser runtime), removes
stale wheels (two versions of one package stop the install), and prints the sizes: the device
tool carries the working tree and these wheels together, at most 64 MiB.

    python scripts/device_wheels.py                       # Python 3.12, into .whl/
    python scripts/device_wheels.py --python-version 3.11 --dest /tmp/whl311   # a dry run here
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "scripts" / "device_requirements.txt"
LIMIT = 64 * 2 ** 20  # the device tool's limit for the working tree and carried paths together
# glibc baselines the wheels may be built for; pip matches each tag exactly (the image is a
# recent Linux, glibc >= 2.35)
PLATFORMS = ["manylinux1_x86_64", "manylinux2014_x86_64"] + [
    f"manylinux_2_{n}_x86_64" for n in (5, 12, 17, 24, 27, 28, 31, 34, 35)]
SDIST_ONLY = {"antlr4-python3-runtime"}  # pure Python, built here into a py3-none-any wheel


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements() -> list[tuple[str, str]]:
    pins = []
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            if not version:
                sys.exit(f"{REQUIREMENTS}: '{line}' is not pinned (NAME==VERSION)")
            pins.append((normalise(name), version.strip()))
    return pins


def wheel_name(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return normalise(name), version


def pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", *args]
    result = subprocess.run(command)
    if result.returncode:
        sys.exit(f"failed ({result.returncode}): {' '.join(command)}")


def tree_bytes() -> int:
    """What the device tool sends besides carried paths: tracked and untracked, not ignored files."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    return sum((ROOT / f.decode()).stat().st_size for f in listed if f and (ROOT / f.decode()).is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python-version", default="3.12", help="the device's Python (default 3.12)")
    parser.add_argument("--dest", default=str(ROOT / ".whl"), help="folder for the wheels (default .whl/)")
    args = parser.parse_args()
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    pins = requirements()
    wanted = dict(pins)
    for stale in dest.glob("*.whl"):
        name, version = wheel_name(stale)
        if wanted.get(name) != version:
            stale.unlink()
    binary = [f"{n}=={v}" for n, v in pins if n not in SDIST_ONLY]
    pip("download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version", args.python_version,
        "--implementation", "cp", *(a for p in PLATFORMS for a in ("--platform", p)), "--dest", str(dest),
        *binary)
    for name, version in pins:
        if name in SDIST_ONLY and not any(wheel_name(w) == (name, version) for w in dest.glob("*.whl")):
            with tempfile.TemporaryDirectory() as tmp:
                pip("wheel", "--quiet", "--no-deps", "--no-binary", name, "--wheel-dir", tmp, f"{name}=={version}")
                for built in Path(tmp).glob("*.whl"):
                    if not built.name.endswith("-py3-none-any.whl"):
                        sys.exit(f"{built.name}: expected a pure-Python wheel")
                    built.replace(dest / built.name)
    wheels = sorted(dest.glob("*.whl"))
    found = {wheel_name(w) for w in wheels}
    missing = [f"{n}=={v}" for n, v in pins if (n, v) not in found]
    if missing or len(wheels) != len(pins):
        sys.exit(f"expected one wheel per requirement; missing {missing}, found {[w.name for w in wheels]}")
    total = sum(w.stat().st_size for w in wheels)
    for wheel in sorted(wheels, key=lambda w: -w.stat().st_size):
        print(f"{wheel.stat().st_size / 2 ** 20:8.2f} MiB  {wheel.name}")
    tree = tree_bytes()
    print(f"{len(wheels)} wheels for Python {args.python_version} in {dest}: {total / 2 ** 20:.1f} MiB; "
          f"with the working tree ({tree / 2 ** 20:.1f} MiB): {(total + tree) / 2 ** 20:.1f} MiB of the "
          f"device tool's 64 MiB")
    if total + tree > LIMIT:
        sys.exit("too large for the device tool: carry fewer wheels or shrink the working tree")


if __name__ == "__main__":
    main()
