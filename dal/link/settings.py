"""The `[mqtt]` config section shared by the agent and the trainer, and its LinkConfig."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dal.config import doc
from dal.errors import ConfigError
from dal.link import topics
from dal.link.client import LinkConfig


@dataclass(frozen=True)
class MqttSection:
    host: str = field(default="127.0.0.1", metadata=doc("Broker host name or address."))
    port: int = field(
        default=1883, metadata=doc("Broker port (8883 is usual for TLS).", min=1, max=65535)
    )
    root: str = field(default=topics.DEFAULT_ROOT, metadata=doc("Topic root of the v1 contract."))
    username: str = field(
        default="",
        metadata=doc(
            "User name; agents log in with their agent id so the broker ACL can confine them."
        ),
    )
    password_file: Path | None = field(
        default=None,
        metadata=doc(
            "File holding the password (kept out of the config file and the process list)."
        ),
    )
    tls: bool = field(default=False, metadata=doc("Use TLS (on when ca_file is set)."))
    ca_file: Path | None = field(
        default=None,
        metadata=doc("CA certificate that signed the broker's; empty = the system CAs."),
    )
    cert_file: Path | None = field(default=None, metadata=doc("Client certificate (optional)."))
    key_file: Path | None = field(default=None, metadata=doc("Client certificate's key."))
    keepalive_s: int = field(default=30, metadata=doc("MQTT keep-alive in seconds.", min=5))
    chunk_kib: int = field(
        default=256,
        metadata=doc(
            "Transfer chunk size; stay well under the broker's max_packet_size (2 MB default).",
            min=16,
            max=1024,
        ),
    )
    protocol: str = field(default="5", metadata=doc("MQTT protocol version: 5 or 3.1.1."))

    def link_config(self, client_id: str) -> LinkConfig:
        """The Link's settings for this section, with the password read from its file."""
        password = None
        if self.password_file is not None:
            try:
                password = self.password_file.read_text().strip()
            except OSError as err:
                raise ConfigError(
                    f"[mqtt] password_file {self.password_file}: {err.strerror}",
                    hint="create it (mode 0600) or remove the key",
                ) from None
        return LinkConfig(
            client_id=client_id,
            host=self.host,
            port=self.port,
            root=self.root,
            username=self.username or None,
            password=password,
            tls=self.tls,
            ca_file=str(self.ca_file) if self.ca_file else None,
            cert_file=str(self.cert_file) if self.cert_file else None,
            key_file=str(self.key_file) if self.key_file else None,
            keepalive_s=self.keepalive_s,
            protocol=self.protocol,
        )
