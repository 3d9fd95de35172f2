"""`Link`: the one MQTT client wrapper both the agent and the trainer use.

What it adds to paho-mqtt 2.x:
- reconnects forever with back-off and re-subscribes every registered pattern in on_connect
  (the session is clean: nothing is assumed to survive a disconnect);
- handlers run on one dispatcher thread, not paho's network thread, so a handler may publish and
  wait for the PUBACK; messages are acknowledged (manual ack) only after the handlers ran, so the
  broker's in-flight window keeps a slow handler from piling messages up in memory;
- a malformed message raises LinkError in its handler: logged, counted per pattern, never fatal;
- `publish` returns after the broker's PUBACK or raises LinkError; it refuses to queue while
  disconnected, because paho keeps QoS 1 messages in memory only (paho#223) and the callers'
  own stores (the agent's outbox) are the source of truth.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from dal.errors import ConfigError, LinkError
from dal.link import topics
from dal.link.messages import AgentStatus, Message, TrainerStatus

logger = logging.getLogger(__name__)

Handler = Callable[[str, bytes], None]
M = TypeVar("M", bound=Message)

_PROTOCOLS = {"5": MQTTProtocolVersion.MQTTv5, "3.1.1": MQTTProtocolVersion.MQTTv311}
_PUBLISH_OVERHEAD = 64  # fixed header, packet id, properties: generous


@dataclass(frozen=True)
class LinkConfig:
    """How to reach the broker. Read once; the Link never changes it."""

    client_id: str
    host: str = "127.0.0.1"
    port: int = 1883
    root: str = topics.DEFAULT_ROOT
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in logs
    tls: bool = False  # also on when ca_file or cert_file is given
    ca_file: str | None = None  # CA that signed the broker's certificate (None: system CAs)
    cert_file: str | None = None  # client certificate, for brokers that require one
    key_file: str | None = None
    tls_insecure: bool = False  # skip the host name check; for tests only
    keepalive_s: int = 30
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    publish_timeout_s: float = 30.0
    max_inflight: int = 20
    max_queued: int = 256  # cap on paho's in-memory queue (in flight + waiting)
    protocol: str = "5"

    def __post_init__(self) -> None:
        topics.check_root(self.root)
        problems = [
            (not self.client_id, "client_id must not be empty"),
            (not 0 < self.port < 65536, f"port {self.port} is not 1..65535"),
            (self.protocol not in _PROTOCOLS, f"protocol must be one of {sorted(_PROTOCOLS)}"),
            (bool(self.cert_file) != bool(self.key_file), "cert_file and key_file go together"),
            (self.password is not None and not self.username, "password needs a username"),
            (not 0 < self.reconnect_min_s <= self.reconnect_max_s, "0 < reconnect_min_s <= max"),
            (self.publish_timeout_s <= 0, "publish_timeout_s must be > 0"),
            (
                self.max_inflight < 1 or self.max_queued < self.max_inflight,
                "max_queued >= max_inflight >= 1",
            ),
        ]
        for bad, why in problems:
            if bad:
                raise ConfigError(f"MQTT link config: {why}")

    @property
    def use_tls(self) -> bool:
        return self.tls or bool(self.ca_file) or bool(self.cert_file)


@dataclass(frozen=True)
class Will:
    """Published by the broker when the client vanishes without DISCONNECT (and by stop()).

    The broker's copy is fixed at connect, so `at_stop` (when given) makes the payload stop()
    publishes: a clean stop then says when it happened, not when the client started."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True
    at_stop: Callable[[], bytes] | None = None

    def stop_payload(self) -> bytes:
        return self.at_stop() if self.at_stop is not None else self.payload


def _no_delay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """Turn Nagle off: small requests and PUBACKs waiting for delayed ACKs cost ~40 ms each."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def agent_will(agent: str, root: str = topics.DEFAULT_ROOT) -> Will:
    """The agent's Last Will: retained 'offline' on agents/{agent}/status."""

    def offline() -> bytes:
        return AgentStatus(agent=agent, state="offline", time=time.time()).to_json()

    return Will(topics.topic("agent_status", root, agent), offline(), at_stop=offline)


def trainer_will(root: str = topics.DEFAULT_ROOT) -> Will:
    """The trainer's Last Will: retained 'offline' on trainer/status."""

    def offline() -> bytes:
        return TrainerStatus(state="offline", time=time.time()).to_json()

    return Will(topics.topic("trainer_status", root), offline(), at_stop=offline)


@dataclass(frozen=True)
class _Incoming:
    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int


class Pending:
    """A QoS 1 publish on its way; `wait()` returns after the PUBACK or raises LinkError."""

    def __init__(self, link: Link, info: mqtt.MQTTMessageInfo, topic: str) -> None:
        self._link = link
        self._info = info
        self._generation = link.generation
        self.topic = topic

    @property
    def done(self) -> bool:
        return self._info.is_published()

    def wait(self, timeout_s: float | None = None) -> None:
        """Wait for the PUBACK; give up early when the connection it went out on is gone (paho
        resends it after the reconnect, but the caller's own retry is the one that counts)."""
        timeout = self._link.config.publish_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        try:
            while not self._info.is_published():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LinkError(
                        f"no PUBACK for {self.topic} within {timeout:g} s",
                        hint="the broker is unreachable or overloaded; the caller retries later",
                    )
                if self._link.generation != self._generation or not self._link.connected:
                    raise LinkError(
                        f"connection lost before the PUBACK for {self.topic}",
                        hint="the link reconnects by itself; the caller retries",
                    )
                self._info.wait_for_publish(min(remaining, 0.1))
        except (ValueError, RuntimeError) as err:
            raise LinkError(f"publish on {self.topic} failed: {err}") from err
        refused = self._link._take_refusal(self._info.mid)
        if refused:
            raise LinkError(
                f"broker refused the publish on {self.topic}: {refused}",
                hint="check this user's rights in the broker's ACL",
            )


class Link:
    """One MQTT connection with a handler registry; see the module docstring."""

    def __init__(self, config: LinkConfig, will: Will | None = None) -> None:
        self.config = config
        self.will = will
        self.max_packet_size: int | None = None  # announced by an MQTT 5 broker in CONNACK
        self.last_error: str | None = None
        self._lock = threading.RLock()
        self._handlers: dict[str, tuple[int, list[Handler]]] = {}
        self._listeners: list[Callable[[], None]] = []
        self._errors: Counter[str] = Counter()
        self._refusals: dict[int, str] = {}
        self._sub_mids: dict[int, list[str]] = {}
        self._connected = threading.Event()
        self._generation = 0
        self._started = False
        self._stopped = False
        self._inbox: queue.Queue[_Incoming | Callable[[], None] | None] = queue.Queue()
        self._dispatcher = threading.Thread(
            target=self._dispatch_loop, name=f"link-{config.client_id}", daemon=True
        )
        self._client = self._make_client()

    # -- setup ---------------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        cfg = self.config
        v5 = cfg.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            clean_session=None if v5 else True,
            protocol=_PROTOCOLS[cfg.protocol],
            manual_ack=True,
        )
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password)
        if cfg.use_tls:
            self._set_tls(client)
        if self.will is not None:
            w = self.will
            client.will_set(w.topic, w.payload, qos=w.qos, retain=w.retain)
        client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)  # type: ignore[arg-type]
        client.max_inflight_messages_set(cfg.max_inflight)
        client.max_queued_messages_set(cfg.max_queued)
        client.on_socket_open = _no_delay
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        return client

    def _set_tls(self, client: mqtt.Client) -> None:
        cfg = self.config
        try:
            client.tls_set(ca_certs=cfg.ca_file, certfile=cfg.cert_file, keyfile=cfg.key_file)
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(
                f"cannot load TLS files (ca {cfg.ca_file}, cert {cfg.cert_file}): {err}",
                hint="check the paths and that the key matches the certificate",
            ) from err
        if cfg.tls_insecure:
            client.tls_insecure_set(True)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, wait_s: float | None = 10.0) -> Link:
        """Connect in the background (forever, with back-off). With `wait_s`, wait for the first
        connection and raise LinkError (after stopping) when it does not come."""
        if self._started:
            raise LinkError("Link.start() called twice", hint="make a new Link after stop()")
        self._started = True
        self._dispatcher.start()
        cfg = self.config
        try:
            self._client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        except ValueError as err:
            self.stop()
            raise ConfigError(f"MQTT link config: {err}") from err
        self._client.loop_start()
        if wait_s is not None and not self.wait_connected(wait_s):
            self.stop()
            raise LinkError(
                f"no MQTT connection to {cfg.host}:{cfg.port} within {wait_s:g} s"
                f" ({self.last_error or 'no answer'})",
                hint="check that the broker runs, the host/port, TLS files and credentials",
            )
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Publish the Will's stop payload (a clean stop says 'offline' too, with the time of
        the stop), disconnect, stop the threads."""
        if not self._started or self._stopped:
            self._stopped = True
            return
        self._stopped = True
        if self.will is not None and self.connected:
            w = self.will
            try:
                self.publish(w.topic, w.stop_payload(), qos=w.qos, retain=w.retain, timeout_s=2.0)
            except LinkError as err:
                logger.warning("could not publish the offline status on stop: %s", err)
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()
        self._inbox.put(None)
        if threading.current_thread() is not self._dispatcher:
            self._dispatcher.join(timeout_s)

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def generation(self) -> int:
        """Counts successful connects; a change means the session (and its packet ids) is new."""
        return self._generation

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def topic(self, name: str, agent: str | None = None) -> str:
        """The topic `name` under this link's root (see dal.link.topics.TOPICS)."""
        return topics.topic(name, self.config.root, agent)

    def errors(self) -> dict[str, int]:
        """Bad messages and failed handlers so far, per subscription pattern."""
        with self._lock:
            return dict(self._errors)

    def count_error(self, key: str) -> None:
        with self._lock:
            self._errors[key] += 1

    # -- subscriptions -------------------------------------------------------------------------

    def subscribe(self, pattern: str, handler: Handler, qos: int = 1) -> None:
        """Call `handler(topic, payload)` on the dispatcher thread for every matching message.
        Registered patterns are re-subscribed on every reconnect."""
        if not pattern:
            raise LinkError("empty subscription pattern")
        with self._lock:
            old_qos, handlers = self._handlers.get(pattern, (qos, []))
            self._handlers[pattern] = (max(old_qos, qos), [*handlers, handler])
            if self.connected:
                self._send_subscribe([(pattern, max(old_qos, qos))])

    def subscribe_message(
        self, pattern: str, message_type: type[M], handler: Callable[[str, M], None], qos: int = 1
    ) -> None:
        """Like `subscribe`, but decodes JSON into `message_type` first (LinkError: counted).
        An empty payload (a cleared retained message) is skipped."""

        def decode_then_handle(topic: str, payload: bytes) -> None:
            if not payload:
                logger.debug("empty payload on %s (retained message cleared)", topic)
                return
            handler(topic, message_type.from_json(payload))

        self.subscribe(pattern, decode_then_handle, qos)

    def subscriptions_settled(self) -> bool:
        """Has the broker answered (SUBACK) every subscription sent so far? What a caller waits
        for before publishing something a fresh subscription must see."""
        with self._lock:
            return not self._sub_mids

    def unsubscribe(self, pattern: str) -> None:
        with self._lock:
            if self._handlers.pop(pattern, None) is not None and self.connected:
                self._client.unsubscribe(pattern)

    def on_connected(self, callback: Callable[[], None]) -> None:
        """Run `callback()` on the dispatcher thread after every (re)connect, e.g. to publish
        retained state again after a broker restart without persistence."""
        with self._lock:
            self._listeners.append(callback)
            if self.connected:
                self._inbox.put(callback)

    def _send_subscribe(self, pairs: list[tuple[str, int]]) -> None:
        result, mid = self._client.subscribe(pairs)
        if result == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._sub_mids[mid] = [p for p, _ in pairs]
        else:
            logger.warning("subscribe to %s failed: %s", pairs, mqtt.error_string(result))

    # -- publishing ----------------------------------------------------------------------------

    def publish_nowait(
        self, topic: str, payload: bytes | Message, qos: int = 1, retain: bool = False
    ) -> Pending:
        """Hand one message to paho; LinkError when disconnected or over the packet limit."""
        data = payload.to_json() if isinstance(payload, Message) else payload
        if not self.connected:
            raise LinkError(
                f"not connected to {self.config.host}:{self.config.port}; {topic} not sent",
                hint="the link reconnects by itself; retry later",
            )
        limit = self.max_packet_size
        if limit is not None and len(data) + len(topic) + _PUBLISH_OVERHEAD > limit:
            raise LinkError(
                f"a {len(data)}-byte message on {topic} exceeds the broker's"
                f" max packet size {limit}",
                hint="lower the chunk size or raise max_packet_size in the broker config",
            )
        info = self._client.publish(topic, data, qos=qos, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            raise LinkError(
                f"paho's queue is full ({self.config.max_queued}); {topic} not sent",
                hint="too many messages in flight; wait for PUBACKs before publishing more",
            )
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise LinkError(f"publish on {topic} failed: {mqtt.error_string(info.rc)}")
        return Pending(self, info, topic)

    def publish(
        self,
        topic: str,
        payload: bytes | Message,
        qos: int = 1,
        retain: bool = False,
        timeout_s: float | None = None,
    ) -> None:
        """Publish and return after the broker's PUBACK; LinkError on timeout or refusal."""
        self.publish_nowait(topic, payload, qos=qos, retain=retain).wait(timeout_s)

    def _take_refusal(self, mid: int) -> str | None:
        with self._lock:
            return self._refusals.pop(mid, None)

    # -- paho callbacks (network thread: keep them short) --------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            self.last_error = str(reason)
            logger.warning(
                "broker %s:%s refused the connection: %s",
                self.config.host,
                self.config.port,
                reason,
            )
            return
        self.max_packet_size = (
            getattr(properties, "MaximumPacketSize", None) if properties else None
        )
        with self._lock:
            self._generation += 1
            pairs = [(pattern, qos) for pattern, (qos, _) in self._handlers.items()]
            if pairs:
                self._send_subscribe(pairs)
            self._connected.set()
            for listener in self._listeners:
                self._inbox.put(listener)
        self.last_error = None
        logger.info(
            "connected to %s:%s as %s", self.config.host, self.config.port, self.config.client_id
        )

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self.last_error = "connection failed (refused, unreachable or TLS handshake error)"
        logger.debug("connect to %s:%s failed", self.config.host, self.config.port)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if was_connected and not self._stopped:
            logger.warning(
                "disconnected from %s:%s (%s); reconnecting",
                self.config.host,
                self.config.port,
                reason,
            )

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._inbox.put(_Incoming(msg.topic, msg.payload, msg.mid, msg.qos, self._generation))

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            with self._lock:
                self._refusals[mid] = str(reason)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[Any], properties: Any
    ) -> None:
        with self._lock:
            patterns = self._sub_mids.pop(mid, [])
        for pattern, reason in zip(patterns, reasons, strict=False):
            if reason.is_failure:
                logger.warning("broker refused the subscription %s: %s", pattern, reason)
                self.count_error(f"subscribe {pattern}")

    # -- dispatcher thread ---------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        while True:
            item = self._inbox.get()
            if item is None:
                return
            if isinstance(item, _Incoming):
                self._deliver(item)
            else:
                self._run_listener(item)

    def _run_listener(self, listener: Callable[[], None]) -> None:
        try:
            listener()
        except LinkError as err:
            logger.warning("on-connect callback failed: %s", err)
        except Exception:
            logger.exception("on-connect callback %r crashed", listener)

    def _deliver(self, msg: _Incoming) -> None:
        with self._lock:
            matches = [
                (pattern, handler)
                for pattern, (_, handlers) in self._handlers.items()
                if mqtt.topic_matches_sub(pattern, msg.topic)
                for handler in handlers
            ]
        try:
            for pattern, handler in matches:
                self._call(pattern, handler, msg)
        finally:
            # An ack from a previous connection would hit a reused packet id: skip it.
            if msg.qos > 0 and msg.generation == self._generation and self.connected:
                self._client.ack(msg.mid, msg.qos)

    def _call(self, pattern: str, handler: Handler, msg: _Incoming) -> None:
        try:
            handler(msg.topic, msg.payload)
        except LinkError as err:
            self.count_error(pattern)
            # While stopping, lost PUBACKs are expected: keep the log quiet.
            log = logger.debug if self._stopped else logger.warning
            log("dropped a message on %s (%d bytes): %s", msg.topic, len(msg.payload), err)
        except Exception:
            self.count_error(pattern)
            logger.exception("handler for %s crashed on a message on %s", pattern, msg.topic)
