"""Run a fire command line the one way this project does: no echo of return values, bad input in one line.

``run_fire(component)`` is what every command (``python -m synth_transforms``, the scripts) calls instead of
``fire.Fire``: commands print what they have to say themselves, so fire never prints or pages a return value, and
the errors that mean "bad input" (``ValueError``, ``FileNotFoundError``, ``KeyError``, ``FileExistsError``,
``NotADirectoryError``, ``PermissionError``) end with ``error: <message>`` and exit status 2 instead of a traceback.

:func:`exit_on_usage_error` gives the same ending to a check run from a bundle config (``monai.bundle run`` wraps
any other exception in a long traceback; only ``SystemExit`` passes through it).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

__all__ = ["run_fire", "exit_on_usage_error", "USAGE_ERRORS"]

USAGE_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, KeyError)


def _message(error: BaseException) -> str:
    """The message of an exception (a KeyError's argument without the quotes ``str`` adds)."""
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])
    return str(error)


def exit_on_usage_error(check, *args, **kwargs):
    """Return ``check(*args, **kwargs)``; on bad input print ``error: <message>`` and exit with status 2.

    For start-up checks in bundle configs, e.g.
    ``"$synth_transforms.fire_runner.exit_on_usage_error(synth_transforms._args.as_size3, @patch_size, ...)"``.
    """
    try:
        return check(*args, **kwargs)
    except USAGE_ERRORS as error:
        print(f"error: {_message(error)}", file=sys.stderr)
        sys.exit(2)


def run_fire(component, argv: Sequence[str] | None = None, name: str | None = None) -> None:
    """Run ``component`` (function, class instance or dict of them) as a fire command line.

    Args:
        component: what fire exposes.
        argv: the arguments (default: ``sys.argv[1:]``).
        name: the program name in fire's help.
    """
    import fire

    try:
        fire.Fire(component, command=list(argv) if argv is not None else None, name=name, serialize=lambda _: None)
    except USAGE_ERRORS as error:
        print(f"error: {_message(error)}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # output piped into a reader that stopped early (``| head``)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
