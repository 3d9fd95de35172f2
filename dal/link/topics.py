"""The v1 topic table: every MQTT topic of the wire contract, as data.

One table, one builder. `docs/mqtt.md` and `systemd/mosquitto-dal.acl` are generated from this
table (`python -m dal.link doc|acl`) and a test checks that they still match it, so a topic
can only change here.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dal.errors import LinkError

DEFAULT_ROOT = "dal/v1"
ANY_AGENT = "+"
AGENT_PLACEHOLDER = "{agent}"
GROUP_PLACEHOLDER = "{group}"

# Agent ids appear in topics and in mosquitto ACL `%u` patterns: no '/', '+', '#' or spaces.
_AGENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ROOT_LEVEL = re.compile(r"^[A-Za-z0-9_.-]+$")

AGENT = "agent"
TRAINER = "trainer"
OPERATOR = "operator"


@dataclass(frozen=True)
class TopicSpec:
    """One topic of the contract: who publishes it, how, and what it carries."""

    name: str
    template: str  # relative to the root; may contain {agent}
    publisher: str  # AGENT, TRAINER or OPERATOR (the trainer may do what the operator does)
    qos: int
    retained: bool
    payload: str  # message class in dal.link.messages, or "chunk" (binary, dal.link.chunks)
    description: str

    @property
    def per_agent(self) -> bool:
        return AGENT_PLACEHOLDER in self.template

    @property
    def per_group(self) -> bool:
        return GROUP_PLACEHOLDER in self.template


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(
        "agent_status",
        "agents/{agent}/status",
        AGENT,
        1,
        True,
        "AgentStatus",
        "online/offline (offline is the Last Will), model version, pool size, fps, backlog",
    ),
    TopicSpec(
        "agent_metrics",
        "agents/{agent}/metrics",
        AGENT,
        0,
        False,
        "Metrics",
        "periodic numbers (fps, latency, pool size, score statistics)",
    ),
    TopicSpec(
        "agent_events",
        "agents/{agent}/events",
        AGENT,
        1,
        False,
        "Event",
        "things that happened: cycle done, model swapped or rolled back, command results",
    ),
    TopicSpec(
        "agent_cmd",
        "agents/{agent}/cmd",
        OPERATOR,
        1,
        False,
        "Command",
        "trigger a cycle, set k/beta/strategy, rescore the pool; the result comes as an event",
    ),
    TopicSpec(
        "sample_header",
        "agents/{agent}/samples/header",
        AGENT,
        1,
        False,
        "SampleHeader",
        "first part of a sample transfer: ids, score, feature, detections, sha256, chunk count",
    ),
    TopicSpec(
        "sample_chunk",
        "agents/{agent}/samples/chunk",
        AGENT,
        1,
        False,
        "chunk",
        "image bytes of a sample transfer, one chunk per message, any order",
    ),
    TopicSpec(
        "sample_ack",
        "agents/{agent}/acks",
        TRAINER,
        1,
        False,
        "Ack",
        "the trainer stored the sample durably (or already had it, or rejects it)",
    ),
    TopicSpec(
        "model_request",
        "agents/{agent}/model/request",
        AGENT,
        1,
        False,
        "ModelRequest",
        "the agent asks for the chunks it is missing of the manifest's model",
    ),
    TopicSpec(
        "model_chunk",
        "agents/{agent}/model/chunk",
        TRAINER,
        1,
        False,
        "chunk",
        "the trainer's answer to a model request, one chunk per message",
    ),
    TopicSpec(
        "model_manifest",
        "models/manifest",
        TRAINER,
        1,
        True,
        "ModelManifest",
        "the model agents should run: version, size, sha256, chunking, Ed25519 signature",
    ),
    TopicSpec(
        "model_manifest_agent",
        "agents/{agent}/model/manifest",
        TRAINER,
        1,
        True,
        "ModelManifest",
        "the model this one agent should run (e.g. a canary); beats its group's and the global one",
    ),
    TopicSpec(
        "trainer_status",
        "trainer/status",
        TRAINER,
        1,
        True,
        "TrainerStatus",
        "online/offline (offline is the Last Will), current model, stored samples",
    ),
    TopicSpec(
        "trainer_metrics",
        "trainer/metrics",
        TRAINER,
        0,
        False,
        "Metrics",
        "periodic numbers of the trainer: samples, labelled, queue, job running",
    ),
)

# Per-group topics need a group id to build (topic(..., group=)), so they are a table of their
# own: code that builds every row of TOPICS from a root and an agent id keeps working.
GROUP_TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(
        "model_manifest_group",
        "groups/{group}/model/manifest",
        TRAINER,
        1,
        True,
        "ModelManifest",
        "the model the agents of `[agent] group` should run; overrides the global manifest",
    ),
)

_BY_NAME = {spec.name: spec for spec in TOPICS + GROUP_TOPICS}


def spec(name: str) -> TopicSpec:
    """The table row called `name`; LinkError names the known ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise LinkError(
            f"unknown topic name {name!r}", hint=f"use one of {', '.join(_BY_NAME)}"
        ) from None


def check_agent_id(agent: str) -> str:
    """Return `agent` if it can be a topic level and an ACL username, else raise LinkError."""
    if not isinstance(agent, str) or not _AGENT_ID.match(agent):
        raise LinkError(
            f"invalid agent id {agent!r}",
            hint="use 1-64 letters, digits, '_', '.', '-' (starting with a letter or digit)",
        )
    return agent


def check_group_id(group: str) -> str:
    """Return `group` if it can be a topic level (same rules as an agent id), else LinkError."""
    if not isinstance(group, str) or not _AGENT_ID.match(group):
        raise LinkError(
            f"invalid group id {group!r}",
            hint="use 1-64 letters, digits, '_', '.', '-' (starting with a letter or digit)",
        )
    return group


def check_root(root: str) -> str:
    """Return `root` if it is a plain topic prefix like 'dal/v1', else raise LinkError."""
    levels = root.split("/") if isinstance(root, str) else [""]
    if not all(_ROOT_LEVEL.match(level) for level in levels):
        raise LinkError(
            f"invalid topic root {root!r}",
            hint="use levels of letters, digits, '_', '.', '-' joined by '/', e.g. 'dal/v1'",
        )
    return root


def topic(
    name: str, root: str = DEFAULT_ROOT, agent: str | None = None, group: str | None = None
) -> str:
    """Build the topic `name` under `root`; per-agent topics need `agent` (or ANY_AGENT),
    per-group ones `group` (or ANY_AGENT, the same '+')."""
    row = spec(name)
    check_root(root)
    if row.per_group:
        if group is None or agent is not None:
            raise LinkError(f"topic {name!r} is per group", hint="pass group= (and no agent=)")
        if group != ANY_AGENT:
            check_group_id(group)
        return f"{root}/{row.template.replace(GROUP_PLACEHOLDER, group)}"
    if group is not None:
        raise LinkError(f"topic {name!r} is not per group", hint="leave group out")
    if row.per_agent:
        if agent is None:
            raise LinkError(f"topic {name!r} is per agent", hint="pass agent= (or ANY_AGENT)")
        if agent != ANY_AGENT:
            check_agent_id(agent)
        return f"{root}/{row.template.replace(AGENT_PLACEHOLDER, agent)}"
    if agent is not None:
        raise LinkError(f"topic {name!r} is not per agent", hint="leave agent out")
    return f"{root}/{row.template}"


def agent_of(topic_name: str, root: str = DEFAULT_ROOT) -> str:
    """The agent id in a received per-agent topic ('{root}/agents/{agent}/...')."""
    prefix = f"{root}/agents/"
    rest = topic_name[len(prefix) :] if topic_name.startswith(prefix) else ""
    agent = rest.split("/", 1)[0]
    if not agent or not _AGENT_ID.match(agent):
        raise LinkError(f"topic {topic_name!r} names no valid agent under {prefix}")
    return agent


def group_of(topic_name: str, root: str = DEFAULT_ROOT) -> str:
    """The group id in a received per-group topic ('{root}/groups/{group}/...')."""
    prefix = f"{root}/groups/"
    rest = topic_name[len(prefix) :] if topic_name.startswith(prefix) else ""
    group = rest.split("/", 1)[0]
    if not group or not _AGENT_ID.match(group):
        raise LinkError(f"topic {topic_name!r} names no valid group under {prefix}")
    return group


def markdown_table(root: str = DEFAULT_ROOT) -> str:
    """The topic table of docs/mqtt.md."""
    lines = [
        "| name | topic | from | QoS | retained | payload | what |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in TOPICS + GROUP_TOPICS:
        retained = "yes" if row.retained else "no"
        lines.append(
            f"| `{row.name}` | `{root}/{row.template}` | {row.publisher} | {row.qos} "
            f"| {retained} | {row.payload} | {row.description} |"
        )
    return "\n".join(lines) + "\n"


def mosquitto_acl(
    root: str = DEFAULT_ROOT,
    trainer: str = "trainer",
    operator: str = "operator",
    groups: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """A mosquitto acl_file: an agent (username = agent id) uses only its own topics.
    `groups` (group -> agent ids) adds a `user` block per grouped agent that may read its
    group's topics: `%u` patterns cannot name a group."""
    check_root(root)
    agent_rows = [row for row in TOPICS if row.per_agent]
    lines = [
        "# mosquitto ACL for dal; generated from the topic table: python -m dal.link acl",
        "# Every agent logs in with its agent id as username (%u below).",
        "",
        f"user {trainer}",
        f"topic readwrite {root}/#",
        "",
        f"user {operator}",
        f"topic read {root}/#",
    ]
    lines += [
        f"topic write {root}/{row.template.replace(AGENT_PLACEHOLDER, '+')}"
        for row in agent_rows
        if row.publisher == OPERATOR
    ]
    lines += ["", "# agents"]
    for row in agent_rows:
        access = "write" if row.publisher == AGENT else "read"
        lines.append(f"pattern {access} {root}/{row.template.replace(AGENT_PLACEHOLDER, '%u')}")
    plain = [row for row in TOPICS if not row.per_agent]
    lines += [f"pattern read {root}/{row.template}" for row in plain]
    lines += _group_acl(root, groups or {})
    return "\n".join(lines) + "\n"


def _group_acl(root: str, groups: Mapping[str, Sequence[str]]) -> list[str]:
    """`user` blocks: each grouped agent reads (never writes) its group's topics."""
    readable = [row for row in GROUP_TOPICS if row.publisher != AGENT]
    members: dict[str, list[str]] = {}
    for group, agents in sorted(groups.items()):
        check_group_id(group)
        for agent in agents:
            members.setdefault(check_agent_id(agent), []).append(group)
    lines = ["", "# agent groups: each agent reads its group's topics"] if members else []
    for agent, names in sorted(members.items()):
        lines.append(f"user {agent}")
        for group in names:
            lines += [
                f"topic read {root}/{row.template.replace(GROUP_PLACEHOLDER, group)}"
                for row in readable
            ]
    return lines


def parse_groups(values: Sequence[str]) -> dict[str, list[str]]:
    """`line3=cam1,cam2` arguments as {group: [agents]}; LinkError names a bad one."""
    groups: dict[str, list[str]] = {}
    for value in values:
        group, sep, agents = value.partition("=")
        names = [a.strip() for a in agents.split(",") if a.strip()]
        if not sep or not names:
            raise LinkError(f"bad group {value!r}", hint="write GROUP=AGENT[,AGENT...]")
        groups.setdefault(check_group_id(group.strip()), []).extend(map(check_agent_id, names))
    return groups


def main(argv: list[str]) -> int:
    """`python -m dal.link doc|acl [ROOT] [--group GROUP=AGENT,AGENT ...]` prints the
    generated table or ACL."""
    usage = "usage: python -m dal.link doc|acl [ROOT] [--group GROUP=AGENT[,AGENT...]]..."
    if not argv or argv[0] not in ("doc", "acl"):
        print(usage, file=sys.stderr)
        return 2
    rest, group_args = list(argv[1:]), []
    while "--group" in rest:
        at = rest.index("--group")
        if at + 1 >= len(rest):
            print(usage, file=sys.stderr)
            return 2
        group_args.append(rest.pop(at + 1))
        rest.pop(at)
    root = rest[0] if rest else DEFAULT_ROOT
    if argv[0] == "doc":
        sys.stdout.write(markdown_table(root))
        return 0
    try:
        sys.stdout.write(mosquitto_acl(root, groups=parse_groups(group_args)))
    except LinkError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
