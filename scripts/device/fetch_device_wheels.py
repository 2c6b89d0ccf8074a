"""Fetch the wheels this project needs on the GPU machine (Python 3.12, torch preinstalled, no internet).

The GPU image already holds torch, numpy, scipy and most of ``install_requires``; the rest travels as wheels in
``.whl/`` (ignored by git through ``.git/info/exclude``) that the device command installs with
``source scripts/device/device_env.sh``. This script:

1. checks that every requirement of ``setup.cfg`` is carried, already in the image, or deliberately skipped;
2. downloads the carried packages (default: the versions installed here) for CPython 3.12 on x86-64 Linux into a
   temporary folder, then moves the complete wheels into ``.whl/``, replacing other versions of the same package;
3. checks each wheel's own ``Requires-Dist`` (as evaluated on the device) is carried or in the image;
4. adds ``/.whl/`` to ``.git/info/exclude`` and prints the wheels, their sizes and the total.

Example (then name ``.whl`` in the device tool's ``carry`` and start the command with
``source scripts/device/device_env.sh &&``)::

    python scripts/device/fetch_device_wheels.py
    python scripts/device/fetch_device_wheels.py --versions '{"monai": "1.6.1"}'
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from email.parser import Parser
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from synth_transforms.fire_runner import run_fire

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DEST = REPO_ROOT / ".whl"

# Installed from the carried wheels on the device (versions default to those installed here).
CARRIED = ("monai", "nibabel", "pytorch-ignite", "fire", "termcolor")
# Already in the device image ('cuda', see the device tool's KINDS.md package list); never carried.
IN_IMAGE = (
    "torch",
    "numpy",
    "scipy",
    "einops",
    "tqdm",
    "pillow",
    "tensorboard",
    "pyyaml",
    "packaging",
    "typing-extensions",
)
# Requirements deliberately not carried, with the reason printed in the summary.
SKIPPED = {
    "itk": "about 270 MiB of binary wheels for 5.4 (itk-core, -filtering, -numerics, ...), over the 64 MiB carry "
    "limit; only an optional image reader, NIfTI goes through nibabel",
}

# The device's Python, as seen by environment markers; `extra` is empty so optional extras never count.
DEVICE_PYTHON = "3.12"
DEVICE_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
DEVICE_MARKER_ENV = {
    "python_version": DEVICE_PYTHON,
    "python_full_version": f"{DEVICE_PYTHON}.3",
    "implementation_name": "cpython",
    "implementation_version": f"{DEVICE_PYTHON}.3",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "platform_release": "",
    "platform_version": "",
    "os_name": "posix",
    "extra": "",
}


def requirement_names(setup_cfg: str | os.PathLike = REPO_ROOT / "setup.cfg") -> list[str]:
    """Canonical names of ``[options] install_requires`` in a setup.cfg."""
    parser = configparser.ConfigParser()
    if not parser.read(setup_cfg):
        raise FileNotFoundError(f"fetch_device_wheels: cannot read {setup_cfg}")
    lines = parser.get("options", "install_requires", fallback="").splitlines()
    return [canonicalize_name(Requirement(line).name) for line in (s.strip() for s in lines) if line]


def check_coverage(
    names: Iterable[str],
    carried: Iterable[str] = CARRIED,
    in_image: Iterable[str] = IN_IMAGE,
    skipped: Iterable[str] = tuple(SKIPPED),
) -> None:
    """Raise ValueError naming each requirement that is neither carried, in the device image, nor skipped."""
    known = {canonicalize_name(n) for group in (carried, in_image, skipped) for n in group}
    unknown = sorted({canonicalize_name(n) for n in names} - known)
    if unknown:
        raise ValueError(
            f"fetch_device_wheels: requirement(s) {', '.join(unknown)} of setup.cfg are not covered: add each to "
            "CARRIED (pure-Python or manylinux x86-64 wheel), IN_IMAGE (if the device image's package list in the "
            "device tool's KINDS.md has it) or SKIPPED (with a reason) in scripts/device/fetch_device_wheels.py"
        )


def device_requirements(metadata_text: str, env: Mapping[str, str] = DEVICE_MARKER_ENV) -> list[Requirement]:
    """``Requires-Dist`` entries of a METADATA text that apply on the device (markers true, no extras)."""
    reqs = [Requirement(line) for line in Parser().parsestr(metadata_text).get_all("Requires-Dist") or ()]
    full_env = {**default_environment(), **env}  # every marker variable defined, the device's values win
    return [r for r in reqs if r.marker is None or r.marker.evaluate(full_env)]


def wheel_metadata(wheel: str | os.PathLike) -> str:
    """Text of a wheel's ``*.dist-info/METADATA``."""
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
        if len(names) != 1:
            raise ValueError(f"fetch_device_wheels: {wheel} has {len(names)} top-level dist-info/METADATA files")
        return zf.read(names[0]).decode("utf-8")


def wheel_project(wheel: str | os.PathLike) -> str:
    """Canonical project name from a wheel's file name."""
    return canonicalize_name(parse_wheel_filename(Path(wheel).name)[0])


def missing_dependencies(
    wheel_paths: Iterable[str | os.PathLike], in_image: Iterable[str] = IN_IMAGE
) -> dict[str, list[str]]:
    """``{wheel file name: [requirement, ...]}`` of device requirements neither in the set nor in the image."""
    wheel_paths = [Path(p) for p in wheel_paths]
    available = {wheel_project(p) for p in wheel_paths} | {canonicalize_name(n) for n in in_image}
    missing = {}
    for wheel in wheel_paths:
        reqs = device_requirements(wheel_metadata(wheel))
        absent = [str(r) for r in reqs if canonicalize_name(r.name) not in available]
        if absent:
            missing[wheel.name] = absent
    return missing


def resolve_versions(
    packages: Iterable[str] = CARRIED, versions: Mapping[str, str] | str | None = None
) -> dict[str, str]:
    """``{name: version}``: ``versions`` (dict or ``"a==1,b==2"``) overrides the versions installed here."""
    if isinstance(versions, str):
        items = [item for item in versions.replace(" ", "").split(",") if item]
        if not all("==" in item for item in items):
            raise ValueError(f"fetch_device_wheels: --versions {versions!r}: use NAME==VERSION[,NAME==VERSION]")
        versions = dict(item.split("==", 1) for item in items)
    overrides = {canonicalize_name(k): str(v) for k, v in (versions or {}).items()}
    unknown = sorted(set(overrides) - {canonicalize_name(p) for p in packages})
    if unknown:
        raise ValueError(f"fetch_device_wheels: --versions names {', '.join(unknown)}, which are not in CARRIED")
    pins = {}
    for name in packages:
        key = canonicalize_name(name)
        if key in overrides:
            pins[key] = overrides[key]
            continue
        try:
            pins[key] = metadata.version(name)
        except metadata.PackageNotFoundError:
            raise ValueError(
                f"fetch_device_wheels: {name} is not installed here; install it or give its version, "
                f"e.g. --versions {name}==X.Y.Z"
            ) from None
    return pins


def pip_download_command(pins: Mapping[str, str], dest: str | os.PathLike) -> list[str]:
    """The ``pip download`` command for CPython 3.12 on x86-64 Linux (pure-Python wheels match any platform)."""
    platforms = [arg for p in DEVICE_PLATFORMS for arg in ("--platform", p)]
    return [
        *(sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"),
        *("--python-version", DEVICE_PYTHON, "--implementation", "cp", *platforms),
        *("--disable-pip-version-check", "-q", "-d", str(dest)),
        *(f"{name}=={version}" for name, version in pins.items()),
    ]


def download(pins: Mapping[str, str], dest: str | os.PathLike = DEFAULT_DEST, force: bool = False) -> list[Path]:
    """Download ``{name: version}`` wheels into ``dest``; all or nothing, other versions of each package removed.

    Wheels already in ``dest`` at the pinned version are kept unless ``force``. Returns the pinned wheels' paths.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    present = {}
    for wheel in dest.glob("*.whl"):
        name, version, *_ = parse_wheel_filename(wheel.name)
        present.setdefault(canonicalize_name(name), []).append((version, wheel))
    wanted = {canonicalize_name(k): v for k, v in pins.items()}
    have = {
        name: wheels[0][1]
        for name, wheels in present.items()
        if not force and name in wanted and [v for v, _ in wheels] == [Version(wanted[name])]
    }
    todo = {name: version for name, version in wanted.items() if name not in have}
    if todo:
        # Inside dest (same file system, so the moves are renames; ignored by git with dest).
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=dest))
        try:
            result = subprocess.run(pip_download_command(todo, tmp), capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"fetch_device_wheels: pip download failed for {todo}:\n{result.stderr.strip()}")
            fetched = {wheel_project(w): w for w in tmp.glob("*.whl")}
            if set(fetched) != set(todo):
                raise RuntimeError(f"fetch_device_wheels: pip gave {sorted(fetched)}, wanted {sorted(todo)}")
            for name, wheel in fetched.items():
                for _, old in present.get(name, ()):
                    if old.name != wheel.name:
                        old.unlink()
                have[name] = dest / wheel.name
                os.replace(wheel, have[name])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return [have[name] for name in wanted]


def exclude_in_git(dest: str | os.PathLike = DEFAULT_DEST, root: str | os.PathLike = REPO_ROOT) -> str:
    """Add ``/<dest>/`` to ``<root>/.git/info/exclude`` once; returns what was done, as a message."""
    root, dest = Path(root).resolve(), Path(dest).resolve()
    if not (root / ".git").is_dir():
        return f"no {root / '.git'} folder: not adding {dest} to .git/info/exclude"
    if not dest.is_relative_to(root):
        return f"{dest} is outside the repository: nothing to exclude"
    pattern = f"/{dest.relative_to(root).as_posix()}/"
    exclude = root / ".git" / "info" / "exclude"
    lines = exclude.read_text().splitlines() if exclude.is_file() else []
    if pattern in (line.strip() for line in lines):
        return f"{pattern} already in {exclude}"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    with open(exclude, "a") as f:
        if lines and not exclude.read_text().endswith("\n"):
            f.write("\n")
        f.write(pattern + "\n")
    return f"added {pattern} to {exclude}"


def summarize(dest: str | os.PathLike = DEFAULT_DEST, max_total_mib: float = 48.0) -> float:
    """Print each wheel in ``dest`` with its size and the total (MiB, returned); raise if over ``max_total_mib``."""
    wheels = sorted(Path(dest).glob("*.whl"))
    total = 0.0
    for wheel in wheels:
        size = wheel.stat().st_size / 2**20
        total += size
        print(f"  {wheel.name:<50} {size:7.2f} MiB")
    print(f"  {len(wheels)} wheels, {total:.2f} MiB in {dest} (limit {max_total_mib} MiB; carry allows 64 MiB)")
    if total > max_total_mib:
        raise ValueError(f"fetch_device_wheels: {total:.2f} MiB of wheels in {dest} exceeds {max_total_mib} MiB")
    return total


def fetch(
    dest: str = str(DEFAULT_DEST),
    versions: dict | str | None = None,
    max_total_mib: float = 48.0,
    setup_cfg: str = str(REPO_ROOT / "setup.cfg"),
    force: bool = False,
) -> list[Path]:
    """Check coverage, download the carried wheels into ``dest``, check their dependencies, print the summary.

    Args:
        dest: wheel folder (name it in the device tool's ``carry``).
        versions: overrides of the versions installed here, ``{"monai": "1.6.1"}`` or ``"monai==1.6.1,fire==0.7.1"``.
        max_total_mib: raise if the wheels in ``dest`` total more.
        setup_cfg: whose ``install_requires`` must be covered.
        force: download again even where ``dest`` has the pinned version.
    """
    check_coverage(requirement_names(setup_cfg))
    pins = resolve_versions(CARRIED, versions)
    wheels = download(pins, dest, force=force)
    missing = missing_dependencies(wheels)
    if missing:
        lines = "\n".join(f"  {wheel}: {', '.join(reqs)}" for wheel, reqs in missing.items())
        raise ValueError(
            f"fetch_device_wheels: on the device these requirements would be missing:\n{lines}\n"
            "add each to CARRIED or, if the device image has it, IN_IMAGE in scripts/device/fetch_device_wheels.py"
        )
    print(exclude_in_git(dest))
    print(f"wheels for Python {DEVICE_PYTHON} on x86-64 Linux, {', '.join(f'{k}=={v}' for k, v in pins.items())}:")
    summarize(dest, max_total_mib)
    for name, reason in SKIPPED.items():
        print(f"not carried: {name} ({reason})")
    print(f"in the device image already: {', '.join(IN_IMAGE)}")
    print(f"device: name {Path(dest).name} in carry, start the command with: source scripts/device/device_env.sh &&")
    return wheels


def main(argv: list[str] | None = None) -> None:
    run_fire(fetch, argv, name="fetch_device_wheels.py")


if __name__ == "__main__":
    main(sys.argv[1:])
