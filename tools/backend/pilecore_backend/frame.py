"""Frames and payloads of docs/protocol.md sections 1-3 and their refusals (section 7)."""

import dataclasses
import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from . import cbor

HEADER = struct.Struct(">BBHIII")  # section 1: version/flags, type, length, device, time, seq
HEADER_SIZE = HEADER.size  # 16
VERSION = 1
FLAG_FRAGMENT = 0x01
FLAGS_RESERVED = 0x0E

# Section 2.
CONTROL, TRANSACTION, STATUS, TELEMETRY, TELEMETRY_COMPACT = 0x01, 0x02, 0x03, 0x04, 0x05
ACK, COMMAND = 0x81, 0x82
TYPE_NAMES = {
    CONTROL: "control",
    TRANSACTION: "transaction",
    STATUS: "status",
    TELEMETRY: "telemetry",
    TELEMETRY_COMPACT: "telemetry_compact",
    ACK: "ack",
    COMMAND: "command",
}
RECORD_TYPES = (CONTROL, TRANSACTION, STATUS, TELEMETRY)
UP_TYPES = RECORD_TYPES + (TELEMETRY_COMPACT,)

# 3.3: OCPP 1.6 ChargePointStatus, by the 4-bit code.
CONNECTOR_STATUS = (
    "Available", "Preparing", "Charging", "SuspendedEV", "SuspendedEVSE",
    "Finishing", "Reserved", "Unavailable", "Faulted",
)
COMPACT_RECORD = struct.Struct(">BHI")  # 7 bytes

# 3.4: the signed bytes start with these 14 ASCII bytes.
COMMAND_PREFIX = b"PILECORE-CMD-1"

# Section 7, in the order of its table.
REASONS = (
    "truncated", "trailing_bytes", "bad_version", "reserved_flags", "unknown_type", "too_large",
    "bad_payload", "bad_fragment", "fragment_conflict", "digest_mismatch", "too_many_transfers",
    "timed_out",
)


class Refused(Exception):
    """A frame, payload or fragment refused with one of section 7's reasons."""

    def __init__(self, reason, detail=""):
        assert reason in REASONS, reason
        super().__init__("%s%s" % (reason, ": " + detail if detail else ""))
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass
class Frame:
    type: int
    device: int
    timestamp: int
    seq: int
    payload: bytes
    flags: int = 0

    @property
    def is_fragment(self):
        return bool(self.flags & FLAG_FRAGMENT)


def decode_frame(data):
    """Parse one frame (section 1). The length field is checked against the bytes, not trusted.

    The refusals are checked in the order section 1 lists them: length first, then version,
    flags and type. The spec gives no order; this one reports a cut frame as `truncated` even
    when its damaged header also has a bad version.
    """
    data = bytes(data)
    if len(data) < HEADER_SIZE:
        raise Refused("truncated", "%d bytes, fewer than the header" % len(data))
    vf, mtype, length, device, timestamp, seq = HEADER.unpack_from(data)
    if len(data) < HEADER_SIZE + length:
        raise Refused("truncated", "the header announces %d payload bytes; %d arrived"
                      % (length, len(data) - HEADER_SIZE))
    if len(data) > HEADER_SIZE + length:
        raise Refused("trailing_bytes", "%d bytes after the payload" % (len(data) - HEADER_SIZE - length))
    if vf >> 4 != VERSION:
        raise Refused("bad_version", "version %d" % (vf >> 4))
    if vf & FLAGS_RESERVED:
        raise Refused("reserved_flags", "flags 0x%X" % (vf & 0x0F))
    if mtype not in TYPE_NAMES:
        raise Refused("unknown_type", "type 0x%02X" % mtype)
    return Frame(mtype, device, timestamp, seq, data[HEADER_SIZE:], vf & 0x0F)


def encode_frame(frame):
    if len(frame.payload) > 0xFFFF:
        raise ValueError("payload of %d bytes does not fit one frame" % len(frame.payload))
    head = HEADER.pack(VERSION << 4 | frame.flags, frame.type, len(frame.payload),
                       frame.device, frame.timestamp & 0xFFFFFFFF, frame.seq & 0xFFFFFFFF)
    return head + bytes(frame.payload)


def _cbor_map(payload, what):
    try:
        value = cbor.loads(payload)
    except cbor.CBORError as exc:
        raise Refused("bad_payload", str(exc)) from exc
    if not isinstance(value, dict):
        raise Refused("bad_payload", "%s is not a CBOR map" % what)
    return value


def _text(value, lo, hi, what):
    if not isinstance(value, str) or not lo <= len(value.encode("utf-8")) <= hi:
        raise Refused("bad_payload", "%s must be text of %d..%d bytes" % (what, lo, hi))
    return value


def _uint(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclasses.dataclass
class Record:
    key: str
    kind: str
    body: object


def decode_record(payload):
    """3.1: a map with "k" (1..64 bytes), "c" (1..32 bytes) and "b"; other keys are ignored.

    "b" is required: the table lists it with the other two and says nothing of its absence.
    """
    value = _cbor_map(payload, "a record")
    if "b" not in value:
        raise Refused("bad_payload", 'record without "b"')
    return Record(_text(value.get("k"), 1, 64, '"k"'), _text(value.get("c"), 1, 32, '"c"'), value["b"])


def encode_record(record):
    return cbor.dumps({"k": record.key, "c": record.kind, "b": record.body})


@dataclasses.dataclass
class Ack:
    keys: list
    ledger: int = None


def decode_ack(payload):
    """3.2: "a" (array of 1..64-byte texts, may be empty; required) and an optional uint "l"."""
    value = _cbor_map(payload, "an ack")
    keys = value.get("a")
    if not isinstance(keys, list):
        raise Refused("bad_payload", '"a" must be an array')
    for key in keys:
        _text(key, 1, 64, 'an ack key')
    ledger = value.get("l")
    if ledger is not None and not _uint(ledger):
        raise Refused("bad_payload", '"l" must be an unsigned integer')
    return Ack(keys, ledger)


def encode_ack(ack):
    value = {"a": list(ack.keys)}
    if ack.ledger is not None:
        value["l"] = ack.ledger
    return cbor.dumps(value)


@dataclasses.dataclass
class ConnectorReading:
    connector: int
    status: int
    power_w: int
    meter_wh: int

    @property
    def status_name(self):
        return CONNECTOR_STATUS[self.status]


def decode_compact(payload):
    """3.3: n >= 1 records of 7 bytes; status 9..15 or a length not a multiple of 7 is refused."""
    if not payload or len(payload) % COMPACT_RECORD.size:
        raise Refused("bad_payload", "compact telemetry of %d bytes" % len(payload))
    out = []
    for (head, power, meter) in COMPACT_RECORD.iter_unpack(payload):
        if head & 0x0F >= len(CONNECTOR_STATUS):
            raise Refused("bad_payload", "unknown connector status %d" % (head & 0x0F))
        out.append(ConnectorReading(head >> 4, head & 0x0F, power * 10, meter))
    return out


def encode_compact(readings):
    return b"".join(COMPACT_RECORD.pack(r.connector << 4 | r.status, r.power_w // 10, r.meter_wh)
                    for r in readings)


@dataclasses.dataclass
class Command:
    name: str
    args: dict
    time: int
    q: int
    body: bytes  # the bytes of "m", exactly as signed
    signature: bytes


def signed_bytes(device, body):
    """3.4: "PILECORE-CMD-1", the device id (4 bytes big-endian), then the body as it is."""
    return COMMAND_PREFIX + struct.pack(">I", device) + body


def decode_command(payload):
    """3.4: {"m": body bytes, "s": signature bytes}; the body is {"c", "a"?, "t", "q"}."""
    value = _cbor_map(payload, "a command")
    body, sig = value.get("m"), value.get("s")
    if not isinstance(body, bytes) or not body or not isinstance(sig, bytes) or not sig:
        raise Refused("bad_payload", '"m" and "s" must be non-empty byte strings')
    inner = _cbor_map(body, "a command body")
    args = inner.get("a", {})
    if not isinstance(args, dict):
        raise Refused("bad_payload", '"a" must be a map')
    t, q = inner.get("t"), inner.get("q")
    if not _uint(t) or t >= 1 << 32 or not _uint(q) or q == 0:
        raise Refused("bad_payload", '"t" must be a uint < 2^32 and "q" a uint > 0')
    return Command(_text(inner.get("c"), 1, 32, '"c"'), args, t, q, body, sig)


def build_command(name, args, time, q, device, private_key):
    """Encode and sign a command for `device` (3.4); returns the payload and the Command."""
    _text(name, 1, 32, "a command name")
    body_map = {"c": name, "t": time, "q": q}
    if args:
        body_map["a"] = args
    body = cbor.dumps(body_map)
    sig = private_key.sign(signed_bytes(device, body), ec.ECDSA(hashes.SHA256()))
    return cbor.dumps({"m": body, "s": sig}), Command(name, args or {}, time, q, body, sig)


def verify_command(command, device, public_key):
    """True when the command's signature verifies over its signed bytes with a P-256 key."""
    try:
        public_key.verify(command.signature, signed_bytes(device, command.body), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def decode_payload(mtype, payload):
    """The payload of a whole (reassembled) message, as its type says."""
    if mtype in RECORD_TYPES:
        return decode_record(payload)
    if mtype == TELEMETRY_COMPACT:
        return decode_compact(payload)
    if mtype == ACK:
        return decode_ack(payload)
    return decode_command(payload)
