"""hjepa-bench: measure the real H-JEPA training step before a long run.

Plugin authors write ``@hjepa_bench.hookimpl`` (see :mod:`hjepa_bench.plugin.hookspecs`).
"""
from .plugin.hookspecs import hookimpl, hookspec

__version__ = "0.1.0"
__all__ = ["hookimpl", "hookspec", "__version__"]
