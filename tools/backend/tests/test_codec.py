"""CBOR strictness, frame refusals and payload validation (docs/protocol.md 1, 3, 7)."""

import unittest

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec

from pilecore_backend import cbor, frame
from pilecore_backend.frame import Refused
from tests import support


def payload_reason(mtype, payload):
    try:
        frame.decode_payload(mtype, payload)
    except Refused as exc:
        return exc.reason
    return None


class StrictCBOR(unittest.TestCase):
    def refused(self, data):
        with self.assertRaises(cbor.CBORError):
            cbor.loads(data)

    def test_nesting_limit_is_16(self):
        self.assertEqual(cbor.loads(b"\x81" * 16 + b"\x00"), [[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]])
        self.refused(b"\x81" * 17 + b"\x00")
        self.refused(b"\xa1\x61\x61" * 17 + b"\x00")  # maps count too

    def test_tags_refused(self):
        self.refused(cbor2.dumps(cbor2.CBORTag(1, 0)))
        self.refused(b"\xa1\x61\x62\xc2\x41\x01")  # a bignum inside a map

    def test_trailing_and_truncated(self):
        self.refused(b"\x01\x02")
        self.refused(b"\x62\x61")
        self.refused(b"\x1b\x00\x00")
        self.refused(b"")

    def test_not_well_formed_or_invalid(self):
        self.refused(b"\x1c")  # reserved additional information
        self.refused(b"\xff")  # a lone break
        self.refused(b"\xf8\x10")  # two-byte simple value below 32
        self.refused(b"\x62\xc3\x28")  # text that is not UTF-8
        self.refused(b"\xa2\x61\x61\x01\x61\x61\x02")  # duplicate key
        self.refused(b"\x5f\x61\x61\xff")  # indefinite bytes with a text chunk
        self.refused(b"\x82\x01")  # array shorter than announced

    def test_accepts_any_valid_encoding(self):
        self.assertEqual(cbor.loads(b"\x9f\x01\x02\xff"), [1, 2])
        self.assertEqual(cbor.loads(b"\xbf\x61\x62\x01\xff"), {"b": 1})
        self.assertEqual(cbor.loads(b"\x7f\x61\x61\x61\x62\xff"), "ab")
        self.assertEqual(cbor.loads(b"\x19\x00\x01"), 1)  # not the shortest, still valid
        self.assertEqual(cbor.loads(b"\xf9\x3c\x00"), 1.0)
        self.assertEqual(cbor.loads(b"\x3a\xff\xff\xff\xff"), -(1 << 32))

    def test_round_trip_against_cbor2(self):
        value = {"z": [1, -1, 2 ** 40, b"\x00\xff", "é", None, True, False, 1.5], "a": {"n": {}}}
        self.assertEqual(cbor.loads(cbor.dumps(value)), value)
        self.assertEqual(cbor2.loads(cbor.dumps(value)), value)
        self.assertEqual(cbor.loads(cbor2.dumps(value)), value)

    def test_shortest_heads_and_key_order(self):
        self.assertEqual(cbor.dumps(23), b"\x17")
        self.assertEqual(cbor.dumps(24), b"\x18\x18")
        self.assertEqual(cbor.dumps(1250), b"\x19\x04\xe2")
        self.assertEqual(cbor.dumps(-25), b"\x38\x18")
        self.assertEqual(cbor.dumps({"k": 0, "b": 0, "c": 0}), b"\xa3\x61b\x00\x61c\x00\x61k\x00")


class Frames(unittest.TestCase):
    def test_round_trip_and_flags(self):
        f = frame.Frame(frame.STATUS, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, b"\x01" * 65535, frame.FLAG_FRAGMENT)
        self.assertEqual(frame.decode_frame(frame.encode_frame(f)), f)

    def test_empty_payload_frame(self):
        self.assertEqual(frame.decode_frame(support.make_frame(frame.ACK, 1, 2, b"")).payload, b"")

    def test_every_reserved_flag(self):
        for bit in (0x02, 0x04, 0x08):
            with self.assertRaises(Refused) as ctx:
                frame.decode_frame(support.make_frame(frame.STATUS, 1, 2, b"\xa0", flags=bit))
            self.assertEqual(ctx.exception.reason, "reserved_flags")

    def test_every_unknown_type(self):
        known = set(frame.TYPE_NAMES)
        for mtype in range(256):
            data = support.make_frame(mtype, 1, 2, b"")
            if mtype in known:
                frame.decode_frame(data)
            else:
                with self.assertRaises(Refused):
                    frame.decode_frame(data)


class Payloads(unittest.TestCase):
    def test_record_fields(self):
        ok = {"k": "a" * 64, "c": "c" * 32, "b": None, "x": "ignored"}
        self.assertEqual(frame.decode_record(cbor2.dumps(ok)), frame.Record("a" * 64, "c" * 32, None))
        for bad in ({"k": "a" * 65, "c": "c", "b": 1}, {"k": "", "c": "c", "b": 1},
                    {"k": "k", "c": "c" * 33, "b": 1}, {"k": "k", "c": "c"}, {"k": b"k", "c": "c", "b": 1},
                    {"c": "c", "b": 1}, ["k", "c", "b"]):
            self.assertEqual(payload_reason(frame.TRANSACTION, cbor2.dumps(bad)), "bad_payload", bad)
        self.assertEqual(payload_reason(frame.CONTROL, cbor2.dumps(ok) + b"\x00"), "bad_payload")
        self.assertEqual(payload_reason(frame.STATUS, b""), "bad_payload")

    def test_record_body_with_a_tag_is_refused(self):
        tagged = cbor2.dumps({"k": "k", "c": "c", "b": cbor2.CBORTag(0, "2026-01-01T00:00:00Z")})
        self.assertEqual(payload_reason(frame.TELEMETRY, tagged), "bad_payload")

    def test_compact(self):
        self.assertEqual(payload_reason(frame.TELEMETRY_COMPACT, b""), "bad_payload")
        self.assertEqual(payload_reason(frame.TELEMETRY_COMPACT, b"\x12" * 8), "bad_payload")
        readings = [frame.ConnectorReading(c, s, 655350, 0xFFFFFFFF) for c, s in ((0, 0), (15, 8))]
        self.assertEqual(frame.decode_compact(frame.encode_compact(readings)), readings)
        for status in range(9, 16):
            self.assertEqual(payload_reason(frame.TELEMETRY_COMPACT, bytes([0x10 | status]) + b"\x00" * 6),
                             "bad_payload")

    def test_ack(self):
        self.assertEqual(frame.decode_ack(cbor2.dumps({"a": []})), frame.Ack([], None))
        for bad in ({"a": ["x" * 65]}, {"a": [""]}, {"l": 1}, {"a": [], "l": -1}, {"a": "k"}):
            self.assertEqual(payload_reason(frame.ACK, cbor2.dumps(bad)), "bad_payload", bad)

    def test_command_build_verify_decode(self):
        key = ec.generate_private_key(ec.SECP256R1())
        payload, built = frame.build_command("status", None, 1767225610, 9, 77, key)
        command = frame.decode_command(payload)
        self.assertEqual((command.name, command.args, command.time, command.q), ("status", {}, 1767225610, 9))
        self.assertNotIn("a", cbor2.loads(command.body))  # absent: no arguments
        self.assertTrue(frame.verify_command(command, 77, key.public_key()))
        self.assertFalse(frame.verify_command(command, 78, key.public_key()))
        for bad in ({"m": b"", "s": b"x"}, {"m": cbor2.dumps({"c": "x", "t": 1, "q": 0}), "s": b"x"},
                    {"m": cbor2.dumps({"c": "x", "t": 1 << 32, "q": 1}), "s": b"x"},
                    {"m": cbor2.dumps({"c": "x", "t": 1, "q": 1, "a": []}), "s": b"x"},
                    {"m": cbor2.dumps({"c": "x", "t": 1, "q": 1})}):
            self.assertEqual(payload_reason(frame.COMMAND, cbor2.dumps(bad)), "bad_payload", bad)


if __name__ == "__main__":
    unittest.main()
