"""Errors that tell the user what went wrong and what to do about it.

Every error raised for bad input derives from :class:`Gemma4Error`, names the file, tensor or
field at fault, and says how to fix it. Nothing is half-loaded when one is raised: the loader
checks the whole checkpoint before it builds a model.
"""


class Gemma4Error(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(Gemma4Error, ValueError):
    """`config.json` (or `generation_config.json`) holds a value this code cannot run."""


class CheckpointError(Gemma4Error, ValueError):
    """A safetensors file is missing, truncated, or lacks or mis-shapes a tensor."""


class InputError(Gemma4Error, ValueError):
    """The caller passed ids, text or options that cannot be run."""
