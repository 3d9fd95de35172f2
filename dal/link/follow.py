"""Which retained manifest an agent follows: its own, else its group's, else the global one.

The agent subscribes to the three manifest topics most specific first, so after every
(re)connect the broker hands it the retained manifests in that order and the first one it
sees is already the one it follows: no detour through a less specific model. An empty
payload (a cleared retained manifest) drops that scope, and the next less specific one counts
again. Everything held is forgotten on reconnect, because a manifest cleared while the link
was down sends nothing when the agent subscribes again.
"""

from __future__ import annotations

import threading

from dal.link.messages import MANIFEST_SCOPES, ModelManifest
from dal.link.topics import check_agent_id, check_group_id, topic

Choice = tuple[str, ModelManifest]  # (scope, manifest)


class ManifestChoice:
    """The manifests heard per scope; thread-safe (link dispatcher and status readers)."""

    def __init__(self, root: str, agent: str, group: str | None = None) -> None:
        self.group = check_group_id(group) if group is not None else None
        self._topics: dict[str, str] = {"agent": topic("model_manifest_agent", root, agent)}
        check_agent_id(agent)
        if self.group is not None:
            self._topics["group"] = topic("model_manifest_group", root, group=self.group)
        self._topics["global"] = topic("model_manifest", root)
        self._held: dict[str, ModelManifest] = {}
        self._lock = threading.Lock()

    def topics(self) -> list[tuple[str, str]]:
        """(scope, topic) pairs, most specific first: the order to subscribe in."""
        return list(self._topics.items())

    def chosen(self) -> Choice | None:
        with self._lock:
            return self._chosen()

    def _chosen(self) -> Choice | None:
        for scope in MANIFEST_SCOPES:
            if scope in self._held:
                return scope, self._held[scope]
        return None

    def update(self, scope: str, payload: bytes) -> tuple[Choice | None, bool]:
        """Take what arrived for `scope`: (the choice now, whether the caller should act on
        it). LinkError (from decoding) leaves what was held: a bad message changes nothing."""
        manifest = ModelManifest.from_json(payload) if payload else None
        with self._lock:
            before = self._chosen()
            if manifest is None:
                self._held.pop(scope, None)
            else:
                self._held[scope] = manifest
            after = self._chosen()
        act = after is not None and (after != before or after[0] == scope)
        return after, act

    def reset(self) -> None:
        """Forget everything (a new connection resends what is still retained)."""
        with self._lock:
            self._held.clear()
