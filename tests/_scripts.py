"""Import a script of ``scripts/`` as a module: ``scripts/`` is on ``sys.path`` in the tests (``pythonpath`` in the
pytest configuration), so a script is imported by the name it has there, once per test session."""

from __future__ import annotations

import importlib
from types import ModuleType


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module; ``name`` may name a subfolder (``"device/fetch_device_wheels"``)."""
    return importlib.import_module(name.removesuffix(".py").replace("/", "."))
