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
    # onnxruntime provider options; the value "{threads}" becomes [detector] threads (left out
    # when threads is 0, so that the provider's own default holds)
    options: tuple[tuple[str, str], ...] = ()

    def usable(self) -> bool:
        return self.library is None or library_loads(self.library)

    def session_options(self, threads: int = 0) -> dict[str, str]:
        """The options onnxruntime gets for this provider."""
        out = {}
        for key, value in self.options:
            if value == "{threads}":
                if not threads:
                    continue
                value = str(threads)
            out[key] = value
        return out
