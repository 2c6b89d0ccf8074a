"""The SwinUNETR checkpoint layout, in one place: wrappers, prefixes, published names, and one tolerant reader.

Weight files come in many layouts: a bare state dict; one wrapped in ``{"state_dict": ...}``, ``{"model": ...}``,
``{"network": ...}`` (ignite ``CheckpointSaver``) and the like; names prefixed by ``module.`` (DDP) or
``_orig_mod.`` (``torch.compile``); and the published Swin UNETR self-supervised encoder (``model_swinvit.pt``),
whose names carry ``module.`` and the older MLP names ``mlp.fc1`` / ``mlp.fc2``. :func:`read_state_dict` reads all
of them, and :func:`to_published` / :func:`from_published` map encoder names between the network and the published
layout. :mod:`synth_transforms.export` (writing releases) and :mod:`synth_transforms.pretrained` (loading into a
network) both build on this module, so what one writes the other reads.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping

import torch

__all__ = [
    "ENCODER_ATTRIBUTE",
    "WRAPPER_KEYS",
    "WHOLE_PREFIXES",
    "PUBLISHED_PREFIX",
    "unwrap_network",
    "read_state_dict",
    "to_published",
    "from_published",
]

#: name of SwinUNETR's Swin encoder sub-module, the part that transfers between tasks
ENCODER_ATTRIBUTE = "swinViT"
#: keys under which checkpoints hold the network's state dict, looked into in this order (nested up to 3 deep)
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "network", "net")
#: prefixes removed when every name of a file carries them (DDP, torch.compile, wrapper modules)
WHOLE_PREFIXES = ("module.", "_orig_mod.", "model.", "network.", "net.")
#: prefix of every name in the published encoder layout
PUBLISHED_PREFIX = "module."
# (network name, published name) pairs: MONAI renamed the Swin MLP layers after the weights were published
_PUBLISHED_NAMES = ((".mlp.linear1.", ".mlp.fc1."), (".mlp.linear2.", ".mlp.fc2."))
# (old, current) names of the encoder sub-module in earlier MONAI versions
_OLD_NAMES = (("swin_vit.", "swinViT."),)
_MAX_DEPTH = 3


def unwrap_network(network: torch.nn.Module) -> torch.nn.Module:
    """Return the plain module inside DDP / DataParallel / ``torch.compile`` wrappers."""
    while True:
        if isinstance(network, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            network = network.module
        elif hasattr(network, "_orig_mod"):
            network = network._orig_mod
        else:
            return network


def read_state_dict(path: str | os.PathLike, what: str = "weights file") -> dict[str, torch.Tensor]:
    """Read the state dict in ``path``: unwrapped from checkpoint keys, whole-file name prefixes removed.

    Accepts a bare state dict or one under :data:`WRAPPER_KEYS` (nested too, e.g. a ``CheckpointSaver`` file that
    also holds the optimiser), with names that all start with one or more of :data:`WHOLE_PREFIXES`. Names are
    otherwise kept as in the file; map published encoder names with :func:`from_published`.

    Args:
        path: a ``torch.save`` file, read with ``weights_only=True`` on the CPU.
        what: what the file is, for error messages (``"pretrained weights file"``, ``"encoder weights"``, ...).

    Returns:
        ``{name: tensor}`` in the file's order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        RuntimeError: the file cannot be loaded (corrupt, truncated, another format, or Python objects that
            weights-only loading refuses).
        ValueError: the file holds no mapping of names to tensors where one is expected.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path}: file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # garbage bytes can fail anywhere in the unpickler (IndexError, KeyError, ...)
        raise RuntimeError(f"{what} {path}: cannot be read: {_unreadable_reason(path)} ({type(e).__name__})") from e
    state = _find_state_dict(obj)
    if state is None:
        found = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(
            f"{what} {path} holds no state dict: expected a mapping of tensor names to tensors, possibly under one "
            f"of {WRAPPER_KEYS}; found {found}"
        )
    return dict(zip(_strip_whole_prefixes(list(state)), state.values(), strict=True))


def _unreadable_reason(path: str) -> str:
    if not zipfile.is_zipfile(path):
        return "it is not a torch.save file (corrupt, truncated, another format, or torch's legacy format)"
    return (
        "it is a torch.save file that cannot be loaded as plain tensors (corrupt, or it holds Python objects that "
        "weights-only loading refuses: re-save just the state dict with torch.save(net.state_dict(), f))"
    )


def _find_state_dict(obj: object, depth: int = 0) -> Mapping | None:
    """The first non-empty mapping of names to tensors in ``obj``, looking inside :data:`WRAPPER_KEYS`."""
    if not isinstance(obj, Mapping) or depth > _MAX_DEPTH:
        return None
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    for key in WRAPPER_KEYS:
        if key in obj:
            found = _find_state_dict(obj[key], depth + 1)
            if found is not None:
                return found
    return None


def _strip_whole_prefixes(names: list[str]) -> list[str]:
    """Remove prefixes shared by every name, repeatedly (``module._orig_mod.x`` -> ``x``)."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in WHOLE_PREFIXES:
            if all(name.startswith(prefix) for name in names):
                names = [name[len(prefix) :] for name in names]
                stripped = True
    return names


def to_published(name: str) -> str:
    """Map an encoder tensor name (relative to ``swinViT``) to the published layout: ``module.`` + ``mlp.fc*``."""
    for network_name, published_name in _PUBLISHED_NAMES:
        name = name.replace(network_name, published_name)
    return PUBLISHED_PREFIX + name


def from_published(name: str) -> str:
    """Map a published (or older MONAI) tensor name to the current network's name; inverse of :func:`to_published`.

    Removes a leading ``module.``, renames ``mlp.fc1`` / ``mlp.fc2`` to ``mlp.linear1`` / ``mlp.linear2`` and
    ``swin_vit.`` to ``swinViT.``. Current names pass unchanged.
    """
    name = name.removeprefix(PUBLISHED_PREFIX)
    for network_name, published_name in _PUBLISHED_NAMES:
        name = name.replace(published_name, network_name)
    for old, current in _OLD_NAMES:
        name = name.replace(old, current)
    return name
