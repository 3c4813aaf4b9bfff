"""fieldsync: an offline-first sync platform generated from YAML entity definitions."""

from fieldsync.errors import Error

__version__ = "0.1.0"
__all__ = ["Error", "__version__"]
