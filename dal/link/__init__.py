"""The MQTT link: the one wire contract (dal/v1) that the agent and the trainer both import.

No torch here. See docs/mqtt.md for the topics and payloads; `dal.link.topics.TOPICS` is the
source of that table.
"""

from dal.link.chunks import DEFAULT_CHUNK_SIZE, Chunk, decode_chunk, encode_chunk
from dal.link.client import Link, LinkConfig, Pending, Will, agent_will, trainer_will
from dal.link.messages import (
    Ack,
    AgentStatus,
    Command,
    Detection,
    Event,
    Metrics,
    ModelManifest,
    ModelRequest,
    SampleHeader,
    TrainerStatus,
    new_sample_id,
)
from dal.link.model import ModelDownloader, build_manifest
from dal.link.model_publisher import ModelPublisher
from dal.link.topics import ANY_AGENT, DEFAULT_ROOT, TOPICS, agent_of, topic
from dal.link.transfer import AckWaiter, SampleReceiver, TransferAssembler, TransferSender

__all__ = [
    "ANY_AGENT",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_ROOT",
    "TOPICS",
    "Ack",
    "AckWaiter",
    "AgentStatus",
    "Chunk",
    "Command",
    "Detection",
    "Event",
    "Link",
    "LinkConfig",
    "Metrics",
    "ModelDownloader",
    "ModelManifest",
    "ModelPublisher",
    "ModelRequest",
    "Pending",
    "SampleHeader",
    "SampleReceiver",
    "TrainerStatus",
    "TransferAssembler",
    "TransferSender",
    "Will",
    "agent_of",
    "agent_will",
    "build_manifest",
    "decode_chunk",
    "encode_chunk",
    "new_sample_id",
    "topic",
    "trainer_will",
]
