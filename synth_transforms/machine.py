"""Facts about the machine a measurement ran on, stored with the numbers (benchmarks, experiment reports)."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

import monai
import numpy as np
import torch

from ._version import __version__

__all__ = ["cpu_model", "machine_facts", "device_name"]


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (``platform.processor()`` where that file is missing)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def device_name(device: str | torch.device = "cuda") -> str:
    """The GPU's name when ``device`` is a CUDA device torch can see, else ``"CPU: <model>, <n> cores"``."""
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device).index or 0)
    return f"CPU: {cpu_model()}, {os.cpu_count()} cores"


def machine_facts() -> dict:
    """CPU, cores, GPU, library versions and the UTC date."""
    cuda = torch.cuda.is_available()
    return {
        "device_name": device_name("cuda"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "synth_transforms": __version__,
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
