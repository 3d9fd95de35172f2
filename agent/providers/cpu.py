"""CPU: always there; the fallback after every other provider."""

from dal.agent.providers.base import Provider

PROVIDER = Provider("CPUExecutionProvider", default=True)
