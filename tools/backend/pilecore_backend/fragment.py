"""Transfers: splitting a message into fragments and reassembling them (docs/protocol.md 5)."""

import collections
import dataclasses
import hashlib
import struct
import time

from .frame import FLAG_FRAGMENT, HEADER_SIZE, Frame, Refused, encode_frame

FRAGMENT_HEADER = struct.Struct(">HHH")  # transfer id, index, count
FRAGMENT_HEADER_SIZE = FRAGMENT_HEADER.size  # 6
DIGEST_SIZE = 32

# The bounds section 5 gives for the pile, applied here per device.
MAX_PAYLOAD = 1 << 20  # 1 MiB of message payload (the digest not counted)
MAX_FRAGMENTS = 4096
MAX_TRANSFERS = 4  # a 5th concurrent transfer is refused
TIMEOUT_S = 120.0
REMEMBERED_COMPLETED = 16


def _body_size(max_frame):
    per = max_frame - HEADER_SIZE - FRAGMENT_HEADER_SIZE
    if per < 1:
        raise ValueError("a frame of %d bytes cannot carry a fragment" % max_frame)
    return per


def fragment_count(payload_size, max_frame):
    """How many fragments `split` makes of a payload of that size (so sequences can be reserved)."""
    count = -(-(payload_size + DIGEST_SIZE) // _body_size(max_frame))
    if count > 0xFFFF:
        raise ValueError("%d bytes need %d fragments, more than 65535" % (payload_size, count))
    return count


def split(mtype, device, timestamp, first_seq, payload, max_frame, transfer_id):
    """The fragment frames (bytes) of one message, for frames of at most `max_frame` bytes.

    The bodies are the payload followed by its SHA-256, cut into equal pieces (the last may be
    shorter); fragment i gets sequence first_seq + i and every fragment the same timestamp.
    """
    per = _body_size(max_frame)
    count = fragment_count(len(payload), max_frame)
    data = bytes(payload) + hashlib.sha256(payload).digest()
    frames = []
    for index in range(count):
        body = data[index * per:(index + 1) * per]
        head = FRAGMENT_HEADER.pack(transfer_id & 0xFFFF, index, count)
        frames.append(encode_frame(Frame(mtype, device, timestamp, (first_seq + index) & 0xFFFFFFFF,
                                         head + body, FLAG_FRAGMENT)))
    return frames


@dataclasses.dataclass
class Message:
    """A reassembled message: the type, and the timestamp and sequence of fragment 0."""
    type: int
    device: int
    timestamp: int
    seq: int
    payload: bytes
    transfer_id: int = None
    fragments: int = 1


@dataclasses.dataclass
class _Transfer:
    type: int
    count: int
    bodies: dict  # index -> body bytes
    size: int
    last_new: float
    first: Frame = None  # fragment 0's frame, once it arrived


class Reassembler:
    """Reassembles transfers keyed by (device id, transfer id), as section 5 describes.

    Bounds are per device (the spec states the pile's, which has one peer; a back end serves a
    fleet, so one pile cannot starve the others). `clock` is injectable for tests.

    Section 5 says to ignore "a fragment of one of the last 16 transfers it completed". A pile
    that restarts may reuse a transfer id while the old one is still remembered, so only a
    fragment identical to the one completed (same type, count, index and body) is ignored;
    any other fragment with that id starts a new transfer.
    """

    def __init__(self, clock=time.monotonic, timeout=TIMEOUT_S):
        self.clock = clock
        self.timeout = timeout
        self.open = {}  # (device, transfer id) -> _Transfer
        self.completed = collections.defaultdict(collections.OrderedDict)  # device -> tid -> digests

    def expire(self):
        """Forget transfers with no new fragment within the timeout; returns their keys."""
        now = self.clock()
        gone = [key for key, t in self.open.items() if now - t.last_new >= self.timeout]
        for key in gone:
            del self.open[key]
        return gone

    def add(self, frame):
        """Take one fragment frame. Returns a Message when the transfer completes, None when it
        needs more (or the fragment was a duplicate); raises Refused otherwise."""
        payload = frame.payload
        if len(payload) < FRAGMENT_HEADER_SIZE:
            raise Refused("bad_fragment", "payload shorter than the fragment header")
        tid, index, count = FRAGMENT_HEADER.unpack_from(payload)
        body = payload[FRAGMENT_HEADER_SIZE:]
        # Refused on its own; the transfer it names (if any) goes on.
        if count == 0 or index >= count or not body:
            raise Refused("bad_fragment", "index %d, count %d, body %d bytes" % (index, count, len(body)))
        key = (frame.device, tid)
        done = self.completed[frame.device].get(tid)
        if done is not None and key not in self.open:
            if done[0] == frame.type and done[1] == count and done[2][index] == hashlib.sha256(body).digest():
                return None
            del self.completed[frame.device][tid]
        transfer = self.open.get(key)
        if transfer is None:
            if count > MAX_FRAGMENTS:
                raise Refused("too_large", "%d fragments" % count)
            if sum(1 for (d, _) in self.open if d == frame.device) >= MAX_TRANSFERS:
                raise Refused("too_many_transfers", "device %d already has %d" % (frame.device, MAX_TRANSFERS))
            transfer = self.open[key] = _Transfer(frame.type, count, {}, 0, self.clock())
        if frame.type != transfer.type or count != transfer.count:
            del self.open[key]
            raise Refused("bad_fragment", "type or count differs from the transfer's first fragment")
        known = transfer.bodies.get(index)
        if known is not None:
            if known == body:
                return None
            del self.open[key]
            raise Refused("fragment_conflict", "index %d arrived with two bodies" % index)
        transfer.bodies[index] = body
        transfer.size += len(body)
        transfer.last_new = self.clock()
        if index == 0:
            transfer.first = frame
        if transfer.size > MAX_PAYLOAD + DIGEST_SIZE:
            del self.open[key]
            raise Refused("too_large", "over %d payload bytes" % MAX_PAYLOAD)
        if len(transfer.bodies) < count:
            return None
        del self.open[key]
        data = b"".join(transfer.bodies[i] for i in range(count))
        if len(data) < DIGEST_SIZE + 1:
            # "A transfer carries at least 33 body bytes": a message payload of at least one.
            raise Refused("bad_fragment", "transfer %d carries %d body bytes" % (tid, len(data)))
        payload, digest = data[:-DIGEST_SIZE], data[-DIGEST_SIZE:]
        if hashlib.sha256(payload).digest() != digest:
            raise Refused("digest_mismatch", "transfer %d of device %d" % (tid, frame.device))
        remembered = self.completed[frame.device]
        remembered[tid] = (transfer.type, count,
                           [hashlib.sha256(transfer.bodies[i]).digest() for i in range(count)])
        while len(remembered) > REMEMBERED_COMPLETED:
            remembered.popitem(last=False)
        first = transfer.first
        return Message(transfer.type, frame.device, first.timestamp, first.seq, payload, tid, count)
