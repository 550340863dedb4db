"""Strict CBOR (RFC 8949) for the pilecore protocol, docs/protocol.md 3.1 and section 7.

The decoder is written here rather than taken from cbor2 because the protocol refuses things a
general decoder accepts: any tag, nesting deeper than 16 arrays/maps, trailing bytes. It also
refuses what RFC 8949 calls not well-formed (reserved additional information, a break outside an
indefinite item, a two-byte simple value below 32, indefinite strings with foreign chunks) and,
as a reading of "not the map its type needs", invalid items: text that is not UTF-8, a map
with a duplicate key (RFC 8949 5.6: such a map is not valid) and unassigned simple values.
`undefined` (simple 23) is read as None.

The encoder writes what the pile writes (3.1): definite lengths, the shortest integer and
length encodings, map keys in ascending order of their bytes. Example 8.6 orders the body's
"connector" before "watts", which is the order of the key *text* bytes, not of the encoded keys
(RFC 8949 4.2.1 would put the shorter "watts" first), so that is the order used.
"""

import math
import struct

MAX_DEPTH = 16  # section 3.1: "nesting deeper than 16 arrays/maps" is refused


class CBORError(ValueError):
    """The bytes are not CBOR this protocol accepts (refusal reason bad_payload)."""


class _Break:
    """The 0xFF stop code, only legal inside an indefinite-length item."""


_BREAK = _Break()


def _hashable(value):
    """A map key as a dict key: arrays and maps become tuples (CBOR allows any key type)."""
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _hashable(v)) for k, v in value.items())
    return value


class _Decoder:
    def __init__(self, data):
        self.data = bytes(data)
        self.pos = 0

    def take(self, n):
        if n > len(self.data) - self.pos:
            raise CBORError("truncated CBOR item")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def argument(self, info):
        """The argument of a head whose additional information is `info` (None: indefinite)."""
        if info < 24:
            return info
        if info == 24:
            return self.take(1)[0]
        if info == 25:
            return struct.unpack(">H", self.take(2))[0]
        if info == 26:
            return struct.unpack(">I", self.take(4))[0]
        if info == 27:
            return struct.unpack(">Q", self.take(8))[0]
        if info == 31:
            return None
        raise CBORError("reserved additional information %d" % info)

    def item(self, depth):
        head = self.take(1)[0]
        major, info = head >> 5, head & 0x1F
        if major == 7:
            return self.simple(info)
        arg = self.argument(info)
        if major == 0:
            self.definite(arg)
            return arg
        if major == 1:
            self.definite(arg)
            return -1 - arg
        if major in (2, 3):
            return self.string(major, arg)
        if major == 6:
            raise CBORError("CBOR tags are refused")
        # Arrays and maps: this one is one level deeper than its container.
        if depth + 1 > MAX_DEPTH:
            raise CBORError("nesting deeper than %d" % MAX_DEPTH)
        if major == 4:
            return self.array(arg, depth + 1)
        return self.map(arg, depth + 1)

    @staticmethod
    def definite(arg):
        if arg is None:
            raise CBORError("indefinite length on an integer")

    def simple(self, info):
        if info < 20:
            raise CBORError("unassigned simple value %d" % info)
        if info == 20:
            return False
        if info == 21:
            return True
        if info == 22:
            return None
        if info == 23:
            return None  # undefined: no Python counterpart, read as null
        if info == 24:
            value = self.take(1)[0]
            if value < 32:
                raise CBORError("two-byte simple value below 32")
            raise CBORError("unassigned simple value %d" % value)
        if info == 25:
            return _half(self.take(2))
        if info == 26:
            return struct.unpack(">f", self.take(4))[0]
        if info == 27:
            return struct.unpack(">d", self.take(8))[0]
        if info == 31:
            return _BREAK
        raise CBORError("reserved additional information %d" % info)

    def string(self, major, arg):
        if arg is None:
            chunks = []
            while True:
                head = self.take(1)[0]
                if head == 0xFF:
                    break
                if head >> 5 != major or head & 0x1F == 31:
                    raise CBORError("bad chunk in an indefinite-length string")
                chunks.append(self.take(self.argument(head & 0x1F)))
            raw = b"".join(chunks)
        else:
            raw = self.take(arg)
        if major == 2:
            return raw
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CBORError("text string is not UTF-8") from exc

    def array(self, arg, depth):
        out = []
        while arg is None or len(out) < arg:
            value = self.item(depth)
            if value is _BREAK:
                if arg is None:
                    return out
                raise CBORError("break inside a definite-length array")
            out.append(value)
        return out

    def map(self, arg, depth):
        out = {}
        count = 0
        while arg is None or count < arg:
            key = self.item(depth)
            if key is _BREAK:
                if arg is None:
                    return out
                raise CBORError("break inside a definite-length map")
            value = self.item(depth)
            if value is _BREAK:
                raise CBORError("map key without a value")
            key = _hashable(key)
            if key in out:
                raise CBORError("duplicate map key %r" % (key,))
            out[key] = value
            count += 1
        return out


def _half(raw):
    bits = struct.unpack(">H", raw)[0]
    sign = -1.0 if bits & 0x8000 else 1.0
    exp, frac = (bits >> 10) & 0x1F, bits & 0x3FF
    if exp == 0:
        return sign * math.ldexp(frac, -24)
    if exp == 31:
        return sign * math.inf if frac == 0 else math.nan
    return sign * math.ldexp(frac + 1024, exp - 25)


def loads(data):
    """Decode exactly one CBOR item that fills `data`; raise CBORError otherwise."""
    decoder = _Decoder(data)
    value = decoder.item(0)
    if value is _BREAK:
        raise CBORError("break outside an indefinite-length item")
    if decoder.pos != len(decoder.data):
        raise CBORError("%d trailing bytes after the CBOR item" % (len(decoder.data) - decoder.pos))
    return value


def _head(major, arg):
    if arg < 24:
        return bytes([major << 5 | arg])
    if arg < 0x100:
        return bytes([major << 5 | 24, arg])
    if arg < 0x10000:
        return bytes([major << 5 | 25]) + struct.pack(">H", arg)
    if arg < 0x100000000:
        return bytes([major << 5 | 26]) + struct.pack(">I", arg)
    if arg < 0x10000000000000000:
        return bytes([major << 5 | 27]) + struct.pack(">Q", arg)
    raise ValueError("integer out of CBOR range: %d" % arg)


def _key_order(key):
    """Sort key for map keys: the key's own bytes (text as UTF-8), see the module docstring."""
    if isinstance(key, str):
        return (0, key.encode("utf-8"))
    return (1, dumps(key))


def dumps(value):
    """Encode `value` deterministically (definite lengths, shortest heads, sorted map keys)."""
    if value is False:
        return b"\xf4"
    if value is True:
        return b"\xf5"
    if value is None:
        return b"\xf6"
    if isinstance(value, int):
        return _head(0, value) if value >= 0 else _head(1, -1 - value)
    if isinstance(value, (bytes, bytearray)):
        return _head(2, len(value)) + bytes(value)
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return _head(3, len(raw)) + raw
    if isinstance(value, (list, tuple)):
        return _head(4, len(value)) + b"".join(dumps(v) for v in value)
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: _key_order(kv[0]))
        return _head(5, len(items)) + b"".join(dumps(k) + dumps(v) for k, v in items)
    if isinstance(value, float):
        return b"\xfb" + struct.pack(">d", value)
    raise TypeError("cannot encode %r as CBOR" % type(value).__name__)


def to_json(value):
    """A JSON-able form of a decoded CBOR value: byte strings as hex, non-text keys as text."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {(k if isinstance(k, str) else repr(k)): to_json(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value
