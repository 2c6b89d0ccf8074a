"""``python -m synth_transforms <command>``: see :mod:`synth_transforms.cli`."""

from .cli import main

if __name__ == "__main__":
    main()
