"""What an execution-provider plug-in declares (see agent/providers/__init__.py)."""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass


@functools.cache
def library_loads(name: str) -> bool:
    """Does the shared library `name` load here? Asked once per process."""
    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class Provider:
    """One onnxruntime execution provider."""

    name: str  # onnxruntime's name, as in [detector] providers
    library: str | None = None  # a shared library it needs at run time, if any
    default: bool = False  # tried by default (in plug-in order)

    def usable(self) -> bool:
        return self.library is None or library_loads(self.library)
