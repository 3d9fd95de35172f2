"""Binary chunk messages: a fixed 44-byte header, then the payload. Never pickle.

Layout (network byte order):

    offset size field
    0      4    magic b"DALC"
    4      1    format version (1)
    5      1    kind: 1 = sample, 2 = model
    6      2    flags (0; reserved)
    8      16   transfer id (dal.link.messages.transfer_id_for)
    24     4    chunk index, 0-based
    28     4    chunk count of the transfer
    32     8    byte offset of this payload in the whole file
    40     4    CRC-32 of the payload
    44     ...  payload

The CRC lets a receiver drop one damaged chunk and get it again instead of failing a whole
160 MB download; the sha256 of the whole file (in the header/manifest) is the real check.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from dal.errors import LinkError

MAGIC = b"DALC"
FORMAT_VERSION = 1
KIND_SAMPLE = 1
KIND_MODEL = 2
_HEADER = struct.Struct("!4sBBH16sIIQI")
HEADER_SIZE = _HEADER.size
DEFAULT_CHUNK_SIZE = 256 * 1024
MIN_CHUNK_SIZE = 1024
# mosquitto 2.1 defaults max_packet_size to 2 MB; leave room for the topic and properties.
MAX_CHUNK_SIZE = 2_000_000 - 16 * 1024


@dataclass(frozen=True)
class Chunk:
    kind: int
    transfer_id: bytes
    index: int
    count: int
    offset: int
    payload: bytes


def check_chunk_size(chunk_size: int) -> int:
    """Return `chunk_size` if it fits every broker we support, else raise LinkError."""
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise LinkError(
            f"chunk size {chunk_size} is outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes",
            hint="the default 262144 (256 KiB) fits mosquitto's 2 MB max_packet_size",
        )
    return chunk_size


def encode_chunk(
    kind: int, transfer_id: bytes, index: int, count: int, offset: int, payload: bytes
) -> bytes:
    """One chunk message: header + payload."""
    if len(transfer_id) != 16:
        raise ValueError("transfer id must be 16 bytes")
    crc = zlib.crc32(payload)
    head = _HEADER.pack(MAGIC, FORMAT_VERSION, kind, 0, transfer_id, index, count, offset, crc)
    return head + payload


def decode_chunk(data: bytes) -> Chunk:
    """Parse and check one chunk message; LinkError for anything malformed or damaged."""
    if len(data) < HEADER_SIZE:
        raise LinkError(f"chunk of {len(data)} bytes is shorter than its {HEADER_SIZE}-byte header")
    magic, version, kind, _flags, tid, index, count, offset, crc = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise LinkError(f"chunk magic {magic!r} is not {MAGIC!r}")
    if version != FORMAT_VERSION:
        raise LinkError(
            f"chunk format version {version} is not {FORMAT_VERSION}",
            hint="agent and trainer run different dal releases; update the older one",
        )
    if kind not in (KIND_SAMPLE, KIND_MODEL):
        raise LinkError(f"chunk kind {kind} is unknown")
    if count == 0 or index >= count:
        raise LinkError(f"chunk index {index} is outside a transfer of {count} chunks")
    payload = data[HEADER_SIZE:]
    if zlib.crc32(payload) != crc:
        raise LinkError(f"chunk {index}/{count} is damaged (CRC mismatch)")
    return Chunk(kind, bytes(tid), index, count, offset, bytes(payload))
