"""The repository's MONAI bundles as the scripts and the tests use them: paths, the CPU smoke overlay, the
``python -m monai.bundle`` command line and the in-process ``ConfigWorkflow``.

It lives beside the scripts, not in ``synth_transforms``: the bundles are not installed with the package. Scripts
import it by name (``import _bundles``: Python puts a script's folder on ``sys.path``); the tests get the same name
from ``pythonpath = scripts`` in the pytest configuration.

    command = bundle_command(PRETRAIN, ["train.json", CPU_SMOKE], root, {"num_iterations": 4})
    workflow = bundle_workflow(PRETRAIN, ["train.json", CPU_SMOKE], root, num_iterations=4)
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
PRETRAIN = BUNDLES / "anatomy_pretrain"
FINETUNE = BUNDLES / "swin_unetr_finetune"
# The tiny CPU settings of each bundle (feature_size 12, 64^3, batch 1, no activation checkpointing, no workers):
# the overlay that the demo, the tests and the experiments' quick modes add after the bundle's other configs.
CPU_SMOKE = "cpu_smoke.json"


def config_dir(bundle: str | os.PathLike) -> Path:
    """``<bundle>/configs``; ``bundle`` is a bundle folder or the name of one in ``bundles/``."""
    configs = (Path(bundle) if len(Path(bundle).parts) > 1 else BUNDLES / bundle) / "configs"
    if not (configs / "metadata.json").is_file():
        raise FileNotFoundError(f"{configs}: not a bundle's configs folder (no metadata.json)")
    return configs


def config_files(bundle: str | os.PathLike, names: Sequence[str]) -> list[str]:
    """Absolute paths of the config files ``names`` of ``bundle``, in order (later files override earlier ones)."""
    configs = config_dir(bundle)
    missing = [name for name in names if not (configs / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{configs}: no config file(s) {missing}")
    return [str(configs / name) for name in names]


def cpu_smoke(bundle: str | os.PathLike) -> dict:
    """The content of the bundle's CPU smoke overlay, ``configs/cpu_smoke.json``."""
    return json.loads((config_dir(bundle) / CPU_SMOKE).read_text())


def override_args(overrides: Mapping) -> list[str]:
    """``--key value`` pairs as ``python -m monai.bundle`` (fire) parses them: lists as JSON, booleans ``True``/
    ``False`` (lower-case ``true`` would stay a string), paths as strings."""
    args = []
    for key, value in overrides.items():
        if isinstance(value, (list, tuple)):
            text = json.dumps(list(value))
        elif isinstance(value, dict):
            text = repr(value)
        else:
            text = str(value)
        args += [f"--{key}", text]
    return args


def bundle_command(
    bundle: str | os.PathLike,
    names: Sequence[str],
    bundle_root: str | os.PathLike | None = None,
    overrides: Mapping | None = None,
    subcommand: Sequence[str] = ("run",),
    nproc: int | None = None,
) -> list[str]:
    """The command line running ``python -m monai.bundle <subcommand>`` on the config files ``names`` of ``bundle``.

    Args:
        bundle: bundle folder or name in ``bundles/``.
        names: config files of the bundle, in order (e.g. ``["train.json", "cpu_smoke.json"]``).
        bundle_root: the run's folder (``--bundle_root``); None leaves the config's own.
        overrides: further ``--key value`` overrides.
        subcommand: the ``monai.bundle`` command and its positional arguments, e.g. ``["verify_net_in_out",
            "network_def"]``; the logging file is passed to ``run`` only (the others do not take one).
        nproc: run under ``torch.distributed.run --standalone`` with this many processes.
    """
    configs = config_dir(bundle)
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc else []
    command = [sys.executable, *launcher, "-m", "monai.bundle", *subcommand]
    command += ["--config_file", json.dumps(config_files(bundle, names)), "--meta_file", str(configs / "metadata.json")]
    if list(subcommand)[:1] == ["run"]:
        command += ["--logging_file", str(configs / "logging.conf")]
    if bundle_root is not None:
        command += ["--bundle_root", str(bundle_root)]
    return command + override_args(overrides or {})


def parse_bundle_command(command: Sequence[str]) -> tuple[list[str], dict]:
    """The config files and the overrides of a ``python -m monai.bundle run`` command line (``bundle_command``'s
    output or a stage's recorded command), the values parsed as ``monai.bundle`` (fire) parses them; the command's
    meta and logging files are left out."""
    import fire.parser

    args = list(command)
    if "run" not in args:
        raise ValueError(f"not a 'monai.bundle run' command: {' '.join(map(str, args))}")
    pairs = args[args.index("run") + 1 :]
    if len(pairs) % 2 or not all(str(key).startswith("--") for key in pairs[::2]):
        raise ValueError(f"expected '--key value' pairs after 'run', got {pairs}")
    parse = fire.parser.DefaultParseValue
    overrides = {key[2:]: parse(value) for key, value in zip(pairs[::2], pairs[1::2], strict=True)}
    if "config_file" not in overrides:
        raise ValueError(f"no --config_file in the command {' '.join(map(str, args))}")
    files = overrides.pop("config_file")
    for key in ("meta_file", "logging_file"):
        overrides.pop(key, None)
    return [files] if isinstance(files, str) else list(files), overrides


def bundle_workflow(
    bundle: str | os.PathLike,
    names: Sequence[str],
    bundle_root: str | os.PathLike | None = None,
    workflow_type: str = "train",
    **overrides,
):
    """The ``monai.bundle.ConfigWorkflow`` that ``bundle_command`` would run, built in this process (not initialised).

    Args:
        bundle: bundle folder or name in ``bundles/``.
        names: config files of the bundle, in order.
        bundle_root: the run's folder; None leaves the config's own.
        workflow_type: ``"train"``, ``"eval"`` or ``"infer"`` (the properties it is checked against).
        overrides: config overrides (``key=value``, ids with ``#`` through ``**{"a#b": value}``).
    """
    from monai.bundle import ConfigWorkflow  # imported here: command lines alone do not need MONAI

    configs = config_dir(bundle)
    if bundle_root is not None:
        overrides["bundle_root"] = str(bundle_root)
    return ConfigWorkflow(
        config_file=config_files(bundle, names),
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        workflow_type=workflow_type,
        **overrides,
    )
