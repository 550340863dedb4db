"""The server against a real mosquitto with mutual TLS, and a fake pile written from the spec."""

import hashlib
import json
import os
import shutil
import struct
import tempfile
import unittest

import cbor2
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pilecore_backend import pki
from tests import support

DEVICE = 123456
MAX_FRAME = 1024  # small, so a firmware image goes as a transfer


def verify_and_read_command(test, pub, header, payload):
    """Check a command as the pile would (3.4) and return its body map."""
    outer = cbor2.loads(payload)
    body, sig = outer["m"], outer["s"]
    signed = b"PILECORE-CMD-1" + struct.pack(">I", header[3]) + body
    pub.verify(sig, signed, ec.ECDSA(hashes.SHA256()))  # raises if it does not verify
    command = cbor2.loads(body)
    test.assertLess(command["t"], 1 << 32)
    test.assertGreater(command["q"], 0)
    return command


def reassemble(fragments):
    """Section 5, as a pile does it: bodies by index, then payload + SHA-256."""
    bodies, count = {}, None
    for header, payload in fragments:
        assert header[0] & 0x01, "not a fragment"
        tid, index, n = struct.unpack_from(">HHH", payload)
        count = n if count is None else count
        assert n == count
        bodies[index] = payload[6:]
    assert sorted(bodies) == list(range(count))
    data = b"".join(bodies[i] for i in range(count))
    assert hashlib.sha256(data[:-32]).digest() == data[-32:], "digest mismatch"
    return data[:-32]


class Base(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="pilecore-backend-test-")
        cls.pki = pki.make(cls.dir)
        cls.db = os.path.join(cls.dir, "backend.db")
        with open(cls.pki["command_public_key"], "rb") as f:
            cls.pub = serialization.load_pem_public_key(f.read())
        cls.broker = support.Broker(cls.dir)
        cls.server = support.Server(cls.pki, cls.broker.port, cls.db, "--max-frame", str(MAX_FRAME))
        cls.pile = support.FakePile(cls.pki, cls.broker.port, "s1", "p1", DEVICE)

    @classmethod
    def tearDownClass(cls):
        cls.pile.close()
        cls.server.stop()
        cls.broker.stop()
        shutil.rmtree(cls.dir)

    def report(self):
        result = support.run_backend("report", "--db", self.db, "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        return {d["device"]: d for d in json.loads(result.stdout)["devices"]}

    def event(self, **fields):
        return self.server.events.wait(lambda e: all(e.get(k) == v for k, v in fields.items()))


class Server(Base):
    def test_record_is_acked_and_a_resend_stored_once(self):
        body = {"fen": 1250, "txn": "T-1"}
        self.pile.send_record("op:T-1/capture", "operation", body)
        self.pile.wait(lambda: self.pile.acks_naming("op:T-1/capture"))
        record = self.event(event="record", key="op:T-1/capture")
        self.assertEqual((record["site"], record["pile"], record["device"], record["kind"], record["body"]),
                         ("s1", "p1", DEVICE, "operation", body))
        # The pile lost the ack: it resends (new frame, same payload); acked again, stored once.
        self.pile.send_frame(2, cbor2.dumps({"k": "op:T-1/capture", "c": "operation", "b": body}))
        self.pile.wait(lambda: len(self.pile.acks_naming("op:T-1/capture")) == 2)
        self.event(event="duplicate", level="record", key="op:T-1/capture")
        device = self.report()[DEVICE]
        self.assertEqual(device["keys"].count("op:T-1/capture"), 1)
        self.assertGreaterEqual(device["record_duplicates"], 1)

    def test_a_frame_delivered_twice_is_dropped(self):
        payload = cbor2.dumps({"k": "status:1:5:0", "c": "status", "b": {"state": "Charging"}})
        data = support.make_frame(3, DEVICE, self.pile.next_seq(), payload)
        self.pile.publish(3, data)
        self.pile.publish(3, data)  # the network delivered it twice: same sequence, same bytes
        self.pile.send_record("status:1:6:0", "status", {"state": "Finishing"}, mtype=3)
        self.pile.wait(lambda: self.pile.acks_naming("status:1:6:0"))
        seq = struct.unpack_from(">I", data, 12)[0]
        self.event(event="duplicate", level="frame", seq=seq)
        self.assertEqual(len(self.pile.acks_naming("status:1:5:0")), 1)
        self.assertGreaterEqual(self.report()[DEVICE]["frame_duplicates"], 1)

    def test_ledger_anchor_in_acks(self):
        self.pile.send_record("ledger:1", "ledger", {"seq": 1})
        self.pile.send_record("ledger:3", "ledger", {"seq": 3})
        self.pile.wait(lambda: self.pile.acks_naming("ledger:3"))
        self.assertEqual(self.pile.acks_naming("ledger:3")[-1].get("l"), 1)
        self.pile.send_record("ledger:2", "ledger", {"seq": 2})
        self.pile.wait(lambda: self.pile.acks_naming("ledger:2"))
        self.assertEqual(self.pile.acks_naming("ledger:2")[-1]["l"], 3)
        self.assertEqual(self.report()[DEVICE]["ledger_highest"], 3)

    def test_refused_frames_are_counted(self):
        record = support.hex_blocks()["transaction-record"]
        self.pile.publish(2, b"\x20" + record[1:])
        self.event(event="refused", reason="bad_version", device=DEVICE)
        self.pile.publish(2, record[:15])
        self.event(event="refused", reason="truncated")
        self.pile.send_frame(2, b"\x81" * 17 + b"\x00")
        self.event(event="refused", reason="bad_payload", device=DEVICE)
        refusals = self.report()[DEVICE]["refusals"]
        self.assertGreaterEqual(refusals.get("bad_version", 0), 1)
        self.assertGreaterEqual(refusals.get("bad_payload", 0), 1)

    def test_an_up_transfer_is_reassembled(self):
        body = {"blob": "x" * 3000}
        payload = cbor2.dumps({"k": "hb:1767225600000", "c": "heartbeat", "b": body})
        data = payload + hashlib.sha256(payload).digest()
        per = 200
        count = -(-len(data) // per)
        seqs = [self.pile.next_seq() for _ in range(count)]
        for index in reversed(range(count)):  # out of order
            head = struct.pack(">HHH", 9, index, count)
            piece = data[index * per:(index + 1) * per]
            self.pile.publish(3, support.make_frame(3, DEVICE, seqs[index], head + piece, flags=1))
        self.pile.wait(lambda: self.pile.acks_naming("hb:1767225600000"))
        self.assertEqual(self.event(event="record", key="hb:1767225600000")["body"], body)

    def test_compact_telemetry_is_stored_not_acked(self):
        example = support.hex_blocks()["compact-telemetry"]
        self.pile.publish(5, support.make_frame(5, DEVICE, self.pile.next_seq(), example[16:]))
        event = self.event(event="telemetry")
        self.assertEqual(event["connectors"], [{"connector": 1, "status": "Charging", "power_w": 7200,
                                                 "meter_wh": 123456}])

    def test_commands_are_signed_and_their_results_matched(self):
        self.pile.send_record("op:T-2/intent", "operation", {})  # the back end learns the device id
        self.pile.wait(lambda: self.pile.acks_naming("op:T-2/intent"))
        self.server.command(site="s1", pile="p1", command="stop_session", args={"connector": 1})
        sent = self.event(event="command", command="stop_session", device=DEVICE)
        self.pile.wait(lambda: any(cbor2.loads(cbor2.loads(p)["m"])["c"] == "stop_session"
                                   for _, p in self.pile.commands if not _[0] & 1))
        header, payload = [(h, p) for h, p in self.pile.commands
                           if not h[0] & 1 and cbor2.loads(cbor2.loads(p)["m"])["c"] == "stop_session"][0]
        self.assertEqual((header[1], header[3], header[5]), (0x82, DEVICE, sent["seq"]))
        command = verify_and_read_command(self, self.pub, header, payload)
        self.assertEqual((command["c"], command["a"], command["q"]), ("stop_session", {"connector": 1}, sent["q"]))
        self.pile.send_record("cmd:%d" % command["q"], "command_result",
                              {"seq": header[5], "q": command["q"], "command": "stop_session", "result": "ok",
                               "message": "stopped"}, mtype=1)
        result = self.event(event="command_result", device=DEVICE, q=command["q"])
        self.assertEqual(result["result"]["result"], "ok")
        self.pile.wait(lambda: self.pile.acks_naming("cmd:%d" % command["q"]))

        # The next command waited for that answer; its sequence follows. It is rejected by the
        # pile, whose answer is matched by the command frame's sequence.
        self.server.command(site="s1", pile="p1", device=DEVICE, command="status")
        sent2 = self.event(event="command", command="status", device=DEVICE)
        self.assertEqual(sent2["q"], sent["q"] + 1)
        self.assertGreater(sent2["seq"], sent["seq"])
        self.pile.send_record("cmd:r%d:1767225610000:0" % sent2["seq"], "command_result",
                              {"seq": sent2["seq"], "q": sent2["q"], "command": "status", "result": "rejected",
                               "reason": "stale", "message": "too old"}, mtype=1)
        self.assertEqual(self.event(event="command_result", device=DEVICE, q=sent2["q"])["result"]["reason"], "stale")

        # A firmware image larger than --max-frame travels as a transfer of command frames.
        image = os.urandom(5000)
        image_path = os.path.join(self.dir, "fw.bin")
        with open(image_path, "wb") as f:
            f.write(image)
        sig = ec.generate_private_key(ec.SECP256R1()).sign(image, ec.ECDSA(hashes.SHA256()))
        self.server.command(site="s1", pile="p1", command="firmware",
                            args={"name": "fw-1.bin", "image": {"$file": image_path}, "sig": {"$hex": sig.hex()}})
        sent3 = self.event(event="command", command="firmware", device=DEVICE)
        self.assertGreater(sent3["fragments"], 1)
        self.pile.wait(lambda: sum(1 for h, _ in self.pile.commands if h[0] & 1) >= sent3["fragments"])
        fragments = [(h, p) for h, p in self.pile.commands if h[0] & 1]
        self.assertTrue(all(16 + len(p) <= MAX_FRAME for _, p in fragments))
        self.assertEqual(fragments[0][0][5], sent3["seq"])
        command = verify_and_read_command(self, self.pub, fragments[0][0], reassemble(fragments))
        self.assertEqual((command["c"], command["a"]["image"], command["a"]["sig"], command["q"]),
                         ("firmware", image, sig, sent2["q"] + 1))

    def test_bad_command_lines_are_reported(self):
        self.server.command(site="nowhere", pile="p9", command="status")
        self.assertIn("no uplink seen", self.event(event="error")["message"])
        # Over the pile's transfer bounds (1 MiB): refused here, no sequence used.
        self.server.command(site="s9", pile="p9", device=9, command="firmware",
                            args={"name": "big.bin", "image": {"$hex": "00" * (1 << 20)}, "sig": {"$hex": "00"}})
        self.assertIn("transfer bounds", self.event(event="error", command="firmware")["message"])
        self.server.command(site="s9", pile="p9", device=9, command="status")
        self.assertEqual(self.event(event="command", device=9)["q"], 1)
        # Only the stack runs its broker: to serve, a broker line is a bad command.
        self.server.command(broker="stop")
        self.assertIn("stack", self.event(event="error", line='{"broker": "stop"}')["message"])


class Restarts(Base):
    def test_broker_restart_loses_nothing(self):
        keys = ["op:T-%d/confirmed" % i for i in range(10)]
        for key in keys[:5]:
            self.pile.send_record(key, "operation", {"n": key})
        self.pile.wait(lambda: all(self.pile.acks_naming(k) for k in keys[:5]))
        port = self.broker.port
        self.broker.stop()
        self.server.events.wait(lambda e: e["event"] == "disconnected")
        for key in keys[5:]:
            self.pile.send_record(key, "operation", {"n": key})
        type(self).broker = support.Broker(self.dir, port)
        self.server.events.wait(lambda e: e["event"] == "resubscribed")
        self.pile.wait(lambda: all(self.pile.acks_naming(k) for k in keys))
        device = self.report()[DEVICE]
        self.assertEqual(sorted(k for k in device["keys"] if k.startswith("op:T-")), sorted(keys))

    def test_server_restart_keeps_counters(self):
        self.pile.send_record("op:R-1/intent", "operation", {})
        self.pile.wait(lambda: self.pile.acks_naming("op:R-1/intent"))
        self.server.command(site="s1", pile="p1", command="status")
        first = self.event(event="command", command="status", device=DEVICE)
        self.assertEqual(self.server.stop(), 0)  # SIGTERM: a clean exit
        type(self).server = support.Server(self.pki, self.broker.port, self.db, "--max-frame", str(MAX_FRAME))
        self.server.command(site="s1", pile="p1", command="status")  # the device id is remembered
        second = self.event(event="command", command="status", device=DEVICE)
        self.assertEqual(second["q"], first["q"] + 1)
        self.assertGreater(second["seq"], first["seq"])
        self.pile.send_record("op:R-1/intent", "operation", {})  # held from before the restart
        self.event(event="duplicate", level="record", key="op:R-1/intent")


if __name__ == "__main__":
    unittest.main()
