"""Export trained SwinUNETR weights: the Swin encoder alone and the whole network, written atomically.

The encoder file uses the layout in which the Swin UNETR self-supervised weights (``model_swinvit.pt``) are
published: ``{"state_dict": {"module.<name>": tensor}}`` with the ``swinViT`` sub-module's names and the older MLP
names (``mlp.fc1`` / ``mlp.fc2``). Both MONAI's ``SwinUNETR.load_from`` and
:func:`synth_transforms.pretrained.load_pretrained` read it. Integer buffers (the attention blocks'
``relative_position_index``, identical in every block for one window size) are stored once as int16, so a
feature_size 48 encoder in float16 stays under 16 MiB.

The whole-network file (``model.pt``) is a plain ``state_dict``, as the MONAI bundle specification asks.
:func:`read_network_state` and :func:`read_encoder_state` read weights back for a release; they accept every file
layout that :func:`~synth_transforms.pretrained.load_pretrained` accepts (:mod:`synth_transforms.checkpoints`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from .checkpoints import ENCODER_ATTRIBUTE, from_published, read_state_dict, to_published, unwrap_network
from .io import atomic_path

__all__ = [
    "ENCODER_FILENAME",
    "NETWORK_FILENAME",
    "unwrap_network",
    "encoder_state_dict",
    "save_atomic",
    "export_encoder",
    "export_network",
    "export_weights",
    "read_network_state",
    "read_encoder_state",
]

logger = logging.getLogger(__name__)

ENCODER_FILENAME = "model_swinvit.pt"
NETWORK_FILENAME = "model.pt"
_ENCODER_KEY = "patch_embed.proj.weight"  # the first tensor of every Swin encoder
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"encoder dtype must be one of {sorted(_DTYPES)} or None, got {dtype!r}")
    return _DTYPES[dtype]


def _encoder_tensors(source: torch.nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``swinViT`` tensors of a network or of a whole-network state dict, without the ``swinViT.`` prefix."""
    if isinstance(source, torch.nn.Module):
        module = unwrap_network(source)
        encoder = getattr(module, ENCODER_ATTRIBUTE, None)
        if not isinstance(encoder, torch.nn.Module):
            raise ValueError(
                f"cannot export the encoder: {type(module).__name__} has no '{ENCODER_ATTRIBUTE}' sub-module "
                "(expected a MONAI SwinUNETR)"
            )
        return dict(encoder.state_dict())
    prefix = ENCODER_ATTRIBUTE + "."
    tensors = {name[len(prefix) :]: value for name, value in source.items() if name.startswith(prefix)}
    if not tensors:
        examples = ", ".join(list(source)[:3]) or "(empty)"
        raise ValueError(
            f"cannot export the encoder: the state dict has no '{prefix}*' tensors (names start like: {examples}); "
            "expected a SwinUNETR state dict"
        )
    return tensors


def encoder_state_dict(
    source: torch.nn.Module | Mapping[str, torch.Tensor], dtype: torch.dtype | str | None = None
) -> dict[str, dict[str, torch.Tensor]]:
    """Return the Swin encoder of ``source`` in the published layout ``{"state_dict": {"module.<name>": tensor}}``.

    Args:
        source: a SwinUNETR (possibly wrapped in DDP or compiled) or its whole-network ``state_dict``.
        dtype: cast floating-point tensors to this type (``torch.float16``, ``"float16"``, ...); None keeps them.

    Returns:
        The encoder checkpoint dictionary, tensors detached and on the CPU.
    """
    dtype = _as_dtype(dtype)
    shared_buffers: dict[tuple, torch.Tensor] = {}
    state: dict[str, torch.Tensor] = {}
    for name, tensor in _encoder_tensors(source).items():
        tensor = tensor.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.to(dtype) if dtype is not None else tensor.clone()
        else:
            tensor = _compact_integer_buffer(tensor, shared_buffers)
        state[to_published(name)] = tensor
    return {"state_dict": state}


def _compact_integer_buffer(tensor: torch.Tensor, shared: dict[tuple, torch.Tensor]) -> torch.Tensor:
    """Store an integer buffer as int16 when its values fit, and equal buffers as one tensor (saved once)."""
    if tensor.numel() and -(2**15) <= int(tensor.min()) and int(tensor.max()) < 2**15:
        tensor = tensor.to(torch.int16)
    key = (tensor.dtype, tuple(tensor.shape), hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest())
    return shared.setdefault(key, tensor.clone())


def save_atomic(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` ``obj`` to a temporary file beside ``path`` and rename it onto ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def export_encoder(
    network: torch.nn.Module | Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    dtype: torch.dtype | str | None = None,
) -> Path:
    """Write the Swin encoder of a SwinUNETR (or of its state dict) to ``path``; see :func:`encoder_state_dict`."""
    return save_atomic(encoder_state_dict(network, dtype), path)


def export_network(network: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Write the whole network's ``state_dict`` (unwrapped, on the CPU) to ``path``."""
    state = {name: tensor.detach().cpu() for name, tensor in unwrap_network(network).state_dict().items()}
    return save_atomic(state, path)


def export_weights(
    network: torch.nn.Module,
    output_dir: str | os.PathLike,
    encoder_filename: str = ENCODER_FILENAME,
    network_filename: str = NETWORK_FILENAME,
    encoder_dtype: torch.dtype | str | None = None,
) -> dict[str, Path]:
    """Export the whole network and its Swin encoder into ``output_dir``.

    Returns:
        ``{"network": path, "encoder": path}``.
    """
    output_dir = Path(output_dir)
    paths = {
        "network": export_network(network, output_dir / network_filename),
        "encoder": export_encoder(network, output_dir / encoder_filename, encoder_dtype),
    }
    logger.info(f"Exported the whole network to {paths['network']} and its Swin encoder to {paths['encoder']}")
    return paths


def read_network_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a whole SwinUNETR's state dict from an exported ``model.pt`` or any training checkpoint.

    Reads every layout :func:`synth_transforms.pretrained.load_pretrained` reads (see
    :func:`synth_transforms.checkpoints.read_state_dict`): wrapped under ``"network"``, ``"model"``,
    ``"state_dict"``, ... (``CheckpointSaver`` files), prefixed by ``module.`` / ``_orig_mod.``, or with the older
    MLP names ``mlp.fc1`` / ``mlp.fc2``, which are renamed to the network's.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        RuntimeError: the file is not a readable torch file.
        ValueError: the file holds no state dict of tensors, or only a Swin encoder (read it with
            :func:`read_encoder_state`).
    """
    state = {from_published(name): tensor for name, tensor in read_state_dict(path, "network weights").items()}
    if _ENCODER_KEY in state:
        raise ValueError(
            f"network weights {path}: the file holds only a Swin encoder (names like {_ENCODER_KEY!r}), not a whole "
            "network; read it as encoder weights (read_encoder_state, or --encoder of scripts/release_weights.py)"
        )
    return state


def read_encoder_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an encoder-only file back as ``swinViT.<name>`` tensors, the input :func:`encoder_state_dict` takes.

    Accepts the published layout written by :func:`export_encoder` (``{"state_dict": {"module.<name>": tensor}}``)
    and the ``swinViT`` sub-module's own state dict (with or without the ``swinViT.`` prefix), in any wrapper that
    :func:`synth_transforms.checkpoints.read_state_dict` reads. So an exported encoder can be re-released (say in
    float16) when the whole network is not at hand.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        RuntimeError: the file is not a readable torch file.
        ValueError: the file holds no Swin encoder state dict (for instance a whole network).
    """
    prefix = ENCODER_ATTRIBUTE + "."
    state = {from_published(name): tensor for name, tensor in read_state_dict(path, "encoder weights").items()}
    if state and all(name.startswith(prefix) for name in state):
        state = {name[len(prefix) :]: tensor for name, tensor in state.items()}
    if _ENCODER_KEY not in state:
        kind = "a whole network: read it as network weights" if prefix + _ENCODER_KEY in state else "no Swin encoder"
        raise ValueError(
            f"encoder weights {path}: expected {{'state_dict': {{'{to_published(_ENCODER_KEY)}': ..., ...}}}} (the "
            f"layout of {ENCODER_FILENAME}) or the {ENCODER_ATTRIBUTE} sub-module's state dict; found {kind} "
            f"(names start like: {', '.join(list(state)[:3])})"
        )
    return {prefix + name: tensor for name, tensor in state.items()}
