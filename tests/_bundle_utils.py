"""Helpers for bundle tests: offline metadata checks against the MONAI bundle specification, command runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

# Mandatory metadata keys of the MONAI bundle specification (docs/source/mb_specification.rst) and their types,
# plus `required_packages_version`, which MONAI >= 1.4 reads in place of the deprecated `optional_packages_version`.
META_REQUIRED = {
    "version": str,
    "changelog": dict,
    "monai_version": str,
    "pytorch_version": str,
    "numpy_version": str,
    "required_packages_version": dict,
    "task": str,
    "description": str,
    "authors": str,
    "copyright": str,
    "network_data_format": dict,
}
TENSOR_FORMAT_REQUIRED = {
    "type": str,
    "format": str,
    "modality": str,
    "num_channels": int,
    "spatial_shape": list,
    "dtype": str,
    "value_range": list,
    "is_patch_data": bool,
    "channel_def": dict,
}
_VERSION = re.compile(r"^\d+\.\d+(\.\d+)?([.\w+-]*)$")


def check_bundle_metadata(meta: Mapping) -> list[str]:
    """Return the problems of a bundle ``metadata.json`` content (empty when it follows the specification)."""
    problems = []
    for key, kind in META_REQUIRED.items():
        if key not in meta:
            problems.append(f"missing key {key!r}")
        elif not isinstance(meta[key], kind):
            problems.append(f"{key!r} should be {kind.__name__}, got {type(meta[key]).__name__}")
    if problems:
        return problems
    for key in ("version", "monai_version", "pytorch_version", "numpy_version"):
        if not _VERSION.match(meta[key]):
            problems.append(f"{key!r} is not a version string: {meta[key]!r}")
    if meta["version"] not in meta["changelog"]:
        problems.append(f"changelog has no entry for version {meta['version']}")
    for name, version in meta["required_packages_version"].items():
        if not isinstance(version, str) or not _VERSION.match(version):
            problems.append(f"required package {name!r} has no version string: {version!r}")
    if "optional_packages_version" in meta:
        problems.append("'optional_packages_version' is deprecated and overwrites 'required_packages_version' in MONAI")
    ndf = meta["network_data_format"]
    for side in ("inputs", "outputs"):
        if not isinstance(ndf.get(side), dict) or not ndf[side]:
            problems.append(f"network_data_format has no {side}")
            continue
        for tensor, spec in ndf[side].items():
            for key, kind in TENSOR_FORMAT_REQUIRED.items():
                if key not in spec:
                    problems.append(f"{side}/{tensor}: missing {key!r}")
                elif not isinstance(spec[key], kind) or (kind is int and isinstance(spec[key], bool)):
                    problems.append(f"{side}/{tensor}: {key!r} should be {kind.__name__}")
            if isinstance(spec.get("value_range"), list) and len(spec["value_range"]) not in (0, 2):
                problems.append(f"{side}/{tensor}: value_range must be [] or [min, max]")
            if isinstance(spec.get("channel_def"), dict) and isinstance(spec.get("num_channels"), int):
                if sorted(spec["channel_def"], key=int) != [str(i) for i in range(spec["num_channels"])]:
                    problems.append(f"{side}/{tensor}: channel_def keys must be '0'..'{spec['num_channels'] - 1}'")
    return problems


def run_cli(args: Sequence[str], cwd: str | Path, timeout: float = 300, env: Mapping | None = None):
    """Run ``python <args>`` in ``cwd`` with stdout and stderr merged; returns the CompletedProcess."""
    return run_command([sys.executable, *args], cwd, timeout, env)


def run_command(command: Sequence[str], cwd: str | Path, timeout: float = 300, env: Mapping | None = None):
    """Run ``command`` (e.g. ``_bundles.bundle_command(...)``) in ``cwd`` with stdout and stderr merged, warnings
    off; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(
        list(command),
        cwd=str(cwd),
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
