"""Every example of docs/protocol.md section 8, read from the document itself."""

import hashlib
import re
import unittest

from cryptography.hazmat.primitives import serialization

from pilecore_backend import cbor, fragment, frame
from pilecore_backend.frame import Refused
from tests import support

DEVICE = 123456  # 0x0001E240
T0 = 1767225600  # 2026-01-01T00:00:00Z = 0x6955B900


class SpecExamples(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.hex = support.hex_blocks()
        cls.blocks = support.blocks()

    def test_every_hex_block_is_covered(self):
        self.assertEqual(set(self.hex), {
            "transaction-record", "ack", "compact-telemetry", "fragment-0", "fragment-1", "fragment-2",
            "command", "command-signed-bytes"})

    def test_8_1_transaction_record(self):
        data = self.hex["transaction-record"]
        f = frame.decode_frame(data)
        self.assertEqual((f.type, f.device, f.timestamp, f.seq, f.flags), (frame.TRANSACTION, DEVICE, T0, 7, 0))
        self.assertEqual(T0, 0x6955B900)
        self.assertEqual(len(f.payload), 48)
        record = frame.decode_payload(f.type, f.payload)
        self.assertEqual(record, frame.Record("op:T-1/capture", "operation", {"fen": 1250, "txn": "T-1"}))
        # The pile's encoding is canonical (3.1): re-encoding gives the same bytes.
        self.assertEqual(frame.encode_frame(frame.Frame(f.type, f.device, f.timestamp, f.seq,
                                                        frame.encode_record(record))), data)

    def test_8_2_ack(self):
        data = self.hex["ack"]
        f = frame.decode_frame(data)
        self.assertEqual((f.type, f.device, f.timestamp, f.seq), (frame.ACK, DEVICE, 0x6955B90A, 3))
        self.assertEqual(f.timestamp, T0 + 10)
        self.assertEqual(len(f.payload), 0x17)
        ack = frame.decode_ack(f.payload)
        self.assertEqual(ack, frame.Ack(["op:T-1/capture"], 42))
        self.assertEqual(frame.encode_frame(frame.Frame(frame.ACK, DEVICE, T0 + 10, 3, frame.encode_ack(ack))), data)

    def test_8_3_compact_telemetry(self):
        data = self.hex["compact-telemetry"]
        self.assertEqual(len(data), 23)
        f = frame.decode_frame(data)
        self.assertEqual((f.type, f.device, f.timestamp, f.seq), (frame.TELEMETRY_COMPACT, DEVICE, 0x6955B93C, 8))
        readings = frame.decode_compact(f.payload)
        self.assertEqual(readings, [frame.ConnectorReading(1, 2, 7200, 123456)])
        self.assertEqual(readings[0].status_name, "Charging")
        self.assertEqual(frame.encode_compact(readings), f.payload)

    def test_8_4_fragments(self):
        frames = [self.hex["fragment-%d" % i] for i in range(3)]
        payload = bytes(range(20))
        digest = "e7aebf577f60412f0312d442c70a1fa6148c090bf5bab404caec29482ae779e8"
        self.assertIn(digest, support.section("8.4"))
        self.assertEqual(hashlib.sha256(payload).hexdigest(), digest)
        self.assertEqual([len(f) for f in frames], [40, 40, 38])
        decoded = [frame.decode_frame(f) for f in frames]
        self.assertEqual([len(f.payload) - 6 for f in decoded], [18, 18, 16])
        self.assertTrue(all(f.is_fragment and f.type == frame.STATUS for f in decoded))
        self.assertEqual([f.seq for f in decoded], [100, 101, 102])
        reassembler = fragment.Reassembler()
        self.assertIsNone(reassembler.add(decoded[0]))
        self.assertIsNone(reassembler.add(decoded[1]))
        message = reassembler.add(decoded[2])
        self.assertEqual((message.type, message.device, message.timestamp, message.seq, message.payload,
                          message.transfer_id, message.fragments),
                         (frame.STATUS, DEVICE, T0, 100, payload, 0x0102, 3))
        # The sender side makes exactly these frames.
        self.assertEqual(fragment.split(frame.STATUS, DEVICE, T0, 100, payload, 40, 0x0102), frames)

    def test_8_5_refusals(self):
        text = support.section("8.5")
        short = support.hex_bytes(re.search(r"`((?:[0-9A-F]{2} )+[0-9A-F]{2})` \(15 bytes\)", text).group(1))
        self.assertEqual(len(short), 15)
        record = self.hex["transaction-record"]

        def reason(data):
            with self.assertRaises(Refused) as ctx:
                frame.decode_frame(data)
            return ctx.exception.reason

        def patched(offset, new):
            return record[:offset] + new + record[offset + len(new):]

        self.assertEqual(reason(short), "truncated")
        self.assertEqual(reason(record[:-1]), "truncated")
        self.assertEqual(reason(record + b"\x00"), "trailing_bytes")
        self.assertEqual(reason(patched(0, b"\x20")), "bad_version")
        self.assertEqual(reason(patched(0, b"\x12")), "reserved_flags")
        self.assertEqual(reason(patched(1, b"\x7E")), "unknown_type")
        self.assertEqual(reason(patched(2, b"\xFF\xFF")), "truncated")
        nested = b"\x81" * 17 + b"\x00"
        f = frame.decode_frame(support.make_frame(frame.TRANSACTION, DEVICE, 9, nested))
        with self.assertRaises(Refused) as ctx:
            frame.decode_payload(f.type, f.payload)
        self.assertEqual(ctx.exception.reason, "bad_payload")
        self.assertIn("nesting", ctx.exception.detail)

    def test_8_6_command(self):
        data = self.hex["command"]
        f = frame.decode_frame(data)
        self.assertEqual((f.type, f.device, f.timestamp, f.seq), (frame.COMMAND, DEVICE, 0x6955B90A, 4))
        self.assertEqual(len(f.payload), 0x84)
        command = frame.decode_command(f.payload)
        self.assertEqual((command.name, command.args, command.time, command.q),
                         ("set_power_limit", {"connector": 1, "watts": 7000}, 1767225610, 1))
        self.assertEqual((len(command.body), len(command.signature)), (0x34, 0x47))
        signed = self.hex["command-signed-bytes"]
        self.assertEqual(signed[:14], b"PILECORE-CMD-1")
        self.assertEqual(frame.signed_bytes(DEVICE, command.body), signed)
        lang, pem = self.blocks["command-key"]
        self.assertEqual(lang, "pem")
        key = serialization.load_pem_public_key(pem.encode())
        self.assertTrue(frame.verify_command(command, DEVICE, key))
        # The signature binds the device id and every body byte.
        self.assertFalse(frame.verify_command(command, DEVICE + 1, key))
        tampered = frame.Command(**{**command.__dict__, "body": command.body.replace(b"\x19\x1b\x58", b"\x19\x1b\x59")})
        self.assertFalse(frame.verify_command(tampered, DEVICE, key))
        # Our encoder writes this body and payload byte for byte.
        body = cbor.dumps({"c": "set_power_limit", "a": {"watts": 7000, "connector": 1}, "t": 1767225610, "q": 1})
        self.assertEqual(body, command.body)
        self.assertEqual(cbor.dumps({"s": command.signature, "m": body}), f.payload)


if __name__ == "__main__":
    unittest.main()
