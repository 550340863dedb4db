"""Transfers both ways (docs/protocol.md 5): order, duplicates, conflicts, digests, bounds."""

import hashlib
import os
import random
import struct
import unittest

from pilecore_backend import fragment, frame
from pilecore_backend.frame import Refused

DEVICE = 123456


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def frames(payload, max_frame=40, tid=7, mtype=frame.STATUS, first_seq=1):
    return [frame.decode_frame(d) for d in fragment.split(mtype, DEVICE, 1767225600, first_seq, payload, max_frame, tid)]


def raw_fragment(tid, index, count, body, mtype=frame.STATUS, seq=1, device=DEVICE):
    return frame.Frame(mtype, device, 0, seq, struct.pack(">HHH", tid, index, count) + body, frame.FLAG_FRAGMENT)


class Fragmentation(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.r = fragment.Reassembler(clock=self.clock)

    def feed(self, parts):
        """Feed fragments; return the single message that came out."""
        out = [m for m in (self.r.add(p) for p in parts) if m is not None]
        self.assertEqual(len(out), 1)
        return out[0]

    def refusal(self, part):
        with self.assertRaises(Refused) as ctx:
            self.r.add(part)
        return ctx.exception.reason

    def test_split_shape(self):
        payload = os.urandom(1000)
        parts = frames(payload, max_frame=100, first_seq=0xFFFFFFFF)
        self.assertEqual(len(parts), fragment.fragment_count(1000, 100))
        self.assertTrue(all(len(frame.encode_frame(p)) <= 100 for p in parts))
        self.assertEqual([p.seq for p in parts[:2]], [0xFFFFFFFF, 0])  # the sequence wraps
        bodies = b"".join(p.payload[6:] for p in parts)
        self.assertEqual(bodies, payload + hashlib.sha256(payload).digest())

    def test_in_order_out_of_order_with_duplicates(self):
        payload = os.urandom(5000)
        parts = frames(payload, max_frame=200)
        shuffled = parts + parts[:5]
        random.Random(1).shuffle(shuffled)
        message = self.feed(shuffled)
        self.assertEqual(message.payload, payload)
        self.assertEqual(message.seq, parts[0].seq)  # fragment 0's sequence
        for p in parts:  # a fragment of a completed transfer is ignored
            self.assertIsNone(self.r.add(p))
        self.assertEqual(self.feed(list(reversed(frames(payload, max_frame=200, tid=8)))).payload, payload)

    def test_larger_than_one_frame_payload(self):
        payload = os.urandom(70000)
        self.assertEqual(self.feed(frames(payload, max_frame=65536)).payload, payload)

    def test_a_reused_transfer_id_with_new_content_is_a_new_transfer(self):
        self.feed(frames(b"first message", tid=3))
        self.assertEqual(self.feed(frames(b"second message!", tid=3)).payload, b"second message!")

    def test_conflict_abandons(self):
        parts = frames(os.urandom(100))
        self.r.add(parts[0])
        changed = parts[0].payload[:-1] + bytes([parts[0].payload[-1] ^ 1])
        other = frame.Frame(**{**parts[0].__dict__, "payload": changed})
        self.assertEqual(self.refusal(other), "fragment_conflict")
        self.assertEqual(self.r.open, {})

    def test_count_or_type_change_abandons(self):
        self.r.add(raw_fragment(1, 0, 3, b"a"))
        self.assertEqual(self.refusal(raw_fragment(1, 1, 4, b"b")), "bad_fragment")
        self.assertEqual(self.r.open, {})
        self.r.add(raw_fragment(1, 0, 3, b"a"))
        self.assertEqual(self.refusal(raw_fragment(1, 1, 3, b"b", mtype=frame.CONTROL)), "bad_fragment")
        self.assertEqual(self.r.open, {})

    def test_bad_headers(self):
        self.assertEqual(self.refusal(raw_fragment(1, 3, 3, b"a")), "bad_fragment")
        self.assertEqual(self.refusal(raw_fragment(1, 0, 0, b"a")), "bad_fragment")
        self.assertEqual(self.refusal(raw_fragment(1, 0, 1, b"")), "bad_fragment")
        short = frame.Frame(frame.STATUS, DEVICE, 0, 1, b"\x00\x01\x00", frame.FLAG_FRAGMENT)
        self.assertEqual(self.refusal(short), "bad_fragment")
        # A transfer of fewer than 33 body bytes carries no payload.
        self.assertEqual(self.refusal(raw_fragment(1, 0, 1, hashlib.sha256(b"").digest())), "bad_fragment")

    def test_digest_mismatch(self):
        parts = frames(bytes(range(20)))
        last = parts[-1]
        last.payload = last.payload[:-1] + bytes([last.payload[-1] ^ 1])
        self.r.add(parts[0])
        self.r.add(parts[1])
        self.assertEqual(self.refusal(last), "digest_mismatch")
        self.assertEqual(self.r.open, {})

    def test_too_large(self):
        self.assertEqual(self.refusal(raw_fragment(1, 0, fragment.MAX_FRAGMENTS + 1, b"a")), "too_large")
        self.r.add(raw_fragment(1, 0, fragment.MAX_FRAGMENTS, b"a"))  # the bound itself is fine
        body = b"x" * 65000
        count = 20
        with self.assertRaises(Refused) as ctx:
            for i in range(count):
                self.r.add(raw_fragment(2, i, count, body))
        self.assertEqual(ctx.exception.reason, "too_large")
        self.assertNotIn((DEVICE, 2), self.r.open)

    def test_a_whole_mebibyte_is_accepted(self):
        payload = os.urandom(fragment.MAX_PAYLOAD)
        self.assertEqual(self.feed(frames(payload, max_frame=65536)).payload, payload)

    def test_too_many_transfers_per_device(self):
        for tid in range(fragment.MAX_TRANSFERS):
            self.r.add(raw_fragment(tid, 0, 2, b"a"))
        self.assertEqual(self.refusal(raw_fragment(99, 0, 2, b"a")), "too_many_transfers")
        self.r.add(raw_fragment(99, 0, 2, b"a", device=DEVICE + 1))  # another pile is not affected

    def test_timeout(self):
        parts = frames(os.urandom(100))
        self.r.add(parts[0])
        self.clock.now += fragment.TIMEOUT_S - 1
        self.assertEqual(self.r.expire(), [])
        self.r.add(parts[1])  # a new fragment restarts the wait
        self.clock.now += fragment.TIMEOUT_S - 1
        self.r.add(parts[1])  # a duplicate does not
        self.clock.now += 1
        self.assertEqual(self.r.expire(), [(DEVICE, 7)])
        self.assertEqual(self.r.open, {})

    def test_forgets_after_16_completed(self):
        first = frames(b"message zero", tid=0)
        self.feed(first)
        for tid in range(1, 17):
            self.feed(frames(b"message %d" % tid, tid=tid))
        self.assertIsNone(self.r.add(first[0]))  # transfer 0 is no longer remembered: a new one
        self.assertIn((DEVICE, 0), self.r.open)


if __name__ == "__main__":
    unittest.main()
