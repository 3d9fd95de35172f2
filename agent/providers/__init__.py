"""onnxruntime execution providers as plug-ins, found by name like the frame sources.

Each plug-in is one module holding a `Provider`: onnxruntime's name for it and what it needs at
run time. Why a library check: onnxruntime-gpu lists its GPU providers as available even on a
machine without a GPU, then fails loudly at session creation; a provider whose library does not
load is skipped with a log line instead. Another provider (ROCm, DirectML, ...) is one more
module here and one line in `_PLUGINS`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from dal.agent.providers import cpu, cuda, openvino, tensorrt
from dal.agent.providers.base import Provider

logger = logging.getLogger(__name__)

_PLUGINS = (tensorrt, cuda, openvino, cpu)
PROVIDERS: dict[str, Provider] = {m.PROVIDER.name: m.PROVIDER for m in _PLUGINS}
# Tried in this order unless [detector] providers says otherwise; CPU always comes last.
DEFAULT_PROVIDERS = tuple(p.name for p in PROVIDERS.values() if p.default)
CPU = cpu.PROVIDER.name


def register_provider(provider: Provider) -> Provider:
    """Add a provider plug-in; its name must be new."""
    if provider.name in PROVIDERS and PROVIDERS[provider.name] != provider:
        raise ValueError(f"provider {provider.name!r} is already registered")
    PROVIDERS[provider.name] = provider
    return provider


def provider_options(name: str, threads: int = 0) -> dict[str, str]:
    """onnxruntime options for the provider `name` ({} for one without a plug-in)."""
    plugin = PROVIDERS.get(name)
    return {} if plugin is None else plugin.session_options(threads)


def choose_providers(wanted: Sequence[str], available: Sequence[str]) -> list[str]:
    """Wanted providers that this onnxruntime build offers and this machine can run, in the
    wanted order (CPU last). Names without a plug-in are passed on as they are."""
    chosen = []
    for name in wanted:
        if name not in available:
            continue
        plugin = PROVIDERS.get(name)
        if plugin is not None and not plugin.usable():
            logger.info("skipping %s: %s is not installed", name, plugin.library)
            continue
        chosen.append(name)
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen


__all__ = [
    "DEFAULT_PROVIDERS",
    "PROVIDERS",
    "Provider",
    "choose_providers",
    "provider_options",
    "register_provider",
]
