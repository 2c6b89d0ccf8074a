"""Turn a pre-training run into a weight release of the anatomy_pretrain bundle.

From the run's whole-network weights (``<run_dir>/models/model.pt`` or a ``CheckpointSaver`` checkpoint) this writes,
each file atomically (temporary name, then rename):

1. ``<release_dir>/model_swinvit.pt``: the Swin encoder in float16 (about 15.6 MiB for feature_size 48), in the
   layout of the published Swin UNETR self-supervised weights (``--encoder_name`` names it otherwise, e.g.
   ``model_swinvit_fs12.pt`` for a network other than the bundle's default); with ``--with_network`` also
   ``model.pt``, the whole network in float32;
2. ``<release_dir>/SHA256SUMS``;
3. the bundle's ``large_files.yml``: one entry per released file (``name``, ``path``, ``url`` = ``base_url/name``,
   ``hash_val``, ``hash_type: sha256``), replacing entries of the same name;
4. the bundle's ``configs/metadata.json``: the new version and its changelog line.

Upload the files of ``release_dir`` to ``base_url``; users then fetch and verify them with
``python -m monai.bundle download_large_files --bundle_path bundles/anatomy_pretrain``.

``--in_bundle`` writes small weights into the bundle's own ``models/`` folder instead, to be committed with it. Their
``large_files.yml`` entries then carry the hash and an empty ``url`` until the files are published somewhere that
resolves (``--base_url`` fills it): ``download_large_files`` checks the committed files' hashes and downloads nothing.

Example::

    python scripts/release_weights.py --run_dir runs/anatomy_fs48 \\
        --base_url https://github.com/OWNER/REPO/releases/download/anatomy_pretrain-v0.2.0 \\
        --message "SwinUNETR fs48, 20k iterations on anatomy-informed shells (H100, AMP)"
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from synth_transforms.export import (
    ENCODER_FILENAME,
    NETWORK_FILENAME,
    encoder_state_dict,
    read_encoder_state,
    read_network_state,
    save_atomic,
)
from synth_transforms.fire_runner import run_fire
from synth_transforms.io import atomic_path, file_sha256, write_json_atomic

DEFAULT_BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "anatomy_pretrain"
VERSION_PARTS = ("major", "minor", "patch")
LARGE_FILES_HEADER = (
    "# Weight files of this bundle, fetched and sha256-checked by:\n"
    "#   python -m monai.bundle download_large_files --bundle_path <this bundle>\n"
    "# Written by scripts/release_weights.py; do not edit the hashes by hand.\n"
)


def parse_version(version: str) -> tuple[int, int, int]:
    """``"1.2.3"`` -> ``(1, 2, 3)``; raises ValueError naming the bad version."""
    parts = str(version).split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"version {version!r}: expected MAJOR.MINOR.PATCH with non-negative integers")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def next_version(current: str, bump: str = "minor", version: str | None = None) -> str:
    """The release version: ``version`` if given (must be greater than ``current``), else ``current`` bumped."""
    old = parse_version(current)
    if version is not None:
        if parse_version(version) <= old:
            raise ValueError(f"version {version} must be greater than the bundle's current version {current}")
        return str(version)
    if bump not in VERSION_PARTS:
        raise ValueError(f"bump must be one of {VERSION_PARTS}, got {bump!r}")
    index = VERSION_PARTS.index(bump)
    new = list(old[:index]) + [old[index] + 1] + [0] * (2 - index)
    return ".".join(str(v) for v in new)


def large_file_entry(path: Path, base_url: str | None) -> dict:
    """The ``large_files.yml`` entry of one released file (an empty ``url`` when it is not published yet)."""
    return {
        "name": path.name,
        "path": f"models/{path.name}",
        "url": f"{base_url.rstrip('/')}/{path.name}" if base_url else "",
        "hash_val": file_sha256(path),
        "hash_type": "sha256",
    }


def update_large_files(bundle: Path, entries: list[dict]) -> Path:
    """Merge ``entries`` into ``bundle/large_files.yml`` (same name replaced, others kept), written atomically."""
    path = bundle / "large_files.yml"
    existing: list[dict] = []
    if path.is_file():
        content = yaml.safe_load(path.read_text()) or {}
        existing = content.get("large_files") or []
        if not isinstance(existing, list):
            raise ValueError(f"{path}: 'large_files' must be a list, got {type(existing).__name__}")
    names = {entry["name"] for entry in entries}
    merged = [entry for entry in existing if entry.get("name") not in names] + entries
    with atomic_path(path) as tmp:
        tmp.write_text(LARGE_FILES_HEADER + yaml.safe_dump({"large_files": merged}, sort_keys=False))
    return path


def update_metadata(bundle: Path, version: str, message: str) -> Path:
    """Set ``version`` in ``bundle/configs/metadata.json`` and put its changelog line first; written atomically."""
    path = bundle / "configs" / "metadata.json"
    if not path.is_file():
        raise FileNotFoundError(f"bundle metadata {path}: file not found")
    metadata = json.loads(path.read_text())
    changelog = metadata.get("changelog", {})
    if version in changelog:
        raise ValueError(f"{path}: the changelog already has version {version}")
    metadata["version"] = version
    metadata["changelog"] = {version: message, **changelog}
    write_json_atomic(path, metadata, indent=4)
    return path


def write_checksums(release_dir: Path, files: list[Path]) -> Path:
    """Write ``SHA256SUMS`` (``<hash>  <name>`` lines, as ``sha256sum -c`` reads them)."""
    path = release_dir / "SHA256SUMS"
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{file_sha256(f)}  {f.name}\n" for f in files))
    return path


def release(
    run_dir: str | None = None,
    base_url: str | None = None,
    message: str | None = None,
    weights: str | None = None,
    bundle: str = str(DEFAULT_BUNDLE),
    release_dir: str | None = None,
    bump: str = "minor",
    version: str | None = None,
    with_network: bool = False,
    encoder: str | None = None,
    in_bundle: bool = False,
    encoder_name: str = ENCODER_FILENAME,
) -> dict:
    """Release the weights of a training run; see the module docstring.

    Args:
        run_dir: the training run's ``bundle_root`` (its ``models/model.pt`` is read unless ``weights`` is given).
        base_url: URL of the folder the released files will be uploaded to.
        message: changelog line of the new version.
        weights: whole-network weights to release: ``model.pt`` or a training checkpoint in any layout that
            ``synth_transforms.pretrained.load_pretrained`` reads (``CheckpointSaver`` files, ``module.`` prefixes).
        bundle: the bundle whose ``large_files.yml`` and ``configs/metadata.json`` are updated.
        release_dir: folder for the released files (default ``<run_dir>/release-<version>``).
        bump: version part to increase (``major``, ``minor``, ``patch``) when ``version`` is not given.
        version: explicit new version, greater than the current one.
        with_network: also release the whole network (float32 ``model.pt``).
        encoder: release an already exported encoder (``model_swinvit.pt``) instead of a whole network, e.g. when
            only the encoder came back from the training machine; incompatible with ``with_network``.
        in_bundle: write the files into ``<bundle>/models`` (to be committed); ``base_url`` may then be left out, and
            the entries get an empty ``url`` until the files are published.
        encoder_name: file name of the released encoder; keep the default ``model_swinvit.pt`` for weights of the
            bundle's default network and name others by what differs (``model_swinvit_fs12.pt``), so that a later
            release of the default does not replace them.

    Returns:
        ``{"version", "files", "large_files", "metadata"}`` with the paths written.
    """
    if not message:
        raise ValueError("release_weights: --message (the changelog line) is required")
    if not base_url and not in_bundle:
        raise ValueError("release_weights: --base_url is required unless --in_bundle commits the files with the bundle")
    if in_bundle and release_dir is not None:
        raise ValueError("release_weights: --in_bundle writes to <bundle>/models; drop --release_dir")
    if Path(encoder_name).name != encoder_name or not encoder_name.endswith(".pt"):
        raise ValueError(f"release_weights: --encoder_name must be a file name ending in .pt, got {encoder_name!r}")
    if encoder is not None and (weights is not None or with_network):
        raise ValueError("release_weights: --encoder releases the encoder alone; drop --weights / --with_network")
    if encoder is not None:
        weights = encoder
    elif weights is None:
        if run_dir is None:
            raise ValueError("release_weights: give --run_dir (a training run's bundle_root), --weights or --encoder")
        weights = str(Path(run_dir) / "models" / NETWORK_FILENAME)
    bundle_path = Path(bundle)
    metadata = json.loads((bundle_path / "configs" / "metadata.json").read_text())
    new_version = next_version(metadata["version"], bump, version)
    if in_bundle:
        out = bundle_path / "models"
    else:
        out = Path(release_dir) if release_dir else Path(run_dir or Path(weights).parent) / f"release-{new_version}"

    state = read_encoder_state(encoder) if encoder is not None else read_network_state(weights)
    files = [save_atomic(encoder_state_dict(state, "float16"), out / encoder_name)]
    if with_network:
        files.append(save_atomic(state, out / NETWORK_FILENAME))
    if not in_bundle:  # the bundle's large_files.yml holds the hashes of files committed with it
        write_checksums(out, files)
    entries = [large_file_entry(f, base_url) for f in files]
    large_files = update_large_files(bundle_path, entries)
    metadata_path = update_metadata(bundle_path, new_version, message)
    for entry, f in zip(entries, files, strict=True):
        where = entry["url"] or "(committed with the bundle, not published yet)"
        print(f"{f} ({f.stat().st_size / 2**20:.2f} MiB) sha256 {entry['hash_val']} -> {where}")
    print(f"bundle {bundle_path}: version {new_version}, {large_files.name} and {metadata_path.name} updated")
    return {"version": new_version, "files": files, "large_files": large_files, "metadata": metadata_path}


def main(argv: list[str] | None = None) -> None:
    run_fire(release, argv, name="release_weights.py")


if __name__ == "__main__":
    main(sys.argv[1:])
