"""The package version, in a module of its own so that modules needing it do not import the whole package."""

__version__ = "0.1.0"
