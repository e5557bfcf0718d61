"""The version of gradaudit (a module of its own: nothing inside the package imports its root)."""

__version__ = "0.1.0"
