"""Frames over LoRaWAN (docs/protocol.md 6.2): a fake network server speaking ChirpStack v4's MQTT
integration on the same mosquitto, with its own certificate, carrying the fake pile's frames."""

import base64
import hashlib
import json
import struct
import unittest

import cbor2

from tests import support
from tests.test_server import DEVICE, Base

DEV_EUI = "70b3d57ed0051a2c"
MTU = 51  # 3.2: a LoRaWAN downlink carries 51 bytes at most; EU868 DR0-2 uplinks too


def record_payload(key, kind, body):
    return cbor2.dumps({"k": key, "c": kind, "b": body}, canonical=True)


class LoRaWAN(Base):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.lns = support.FakeNetworkServer(cls.pki, cls.broker.port)

    @classmethod
    def tearDownClass(cls):
        cls.lns.close()
        super().tearDownClass()

    def uplink(self, payload, mtype=3, f_port=10, dev_eui=DEV_EUI, flags=0):
        """One frame of the pile (its next sequence) as an uplink; returns the frame."""
        frame = support.make_frame(mtype, DEVICE, self.pile.next_seq(), payload, flags)
        self.lns.uplink(dev_eui, frame, f_port)
        return frame

    def downlink_ack(self, key, dev_eui=DEV_EUI):
        """The (only) ack downlink naming `key`, checked against 6.2 and 3.2."""
        self.lns.wait(lambda: self.lns.acks_naming(key, dev_eui))
        (topic, message, data, header, ack), = self.lns.acks_naming(key, dev_eui)
        self.assertEqual(topic, "application/%s/device/%s/command/down" % (self.lns.application_id, dev_eui))
        self.assertEqual(sorted(message), ["confirmed", "data", "devEui", "fPort"])
        self.assertEqual((message["devEui"], message["confirmed"]), (dev_eui, False))
        self.assertLessEqual(len(data), MTU)
        self.assertEqual((header[0], header[1], header[2], header[3]), (0x10, 0x81, len(data) - 16, DEVICE))
        self.assertEqual(ack["a"], [key])  # one key per ack over LoRaWAN
        self.assertLessEqual(set(ack), {"a", "l"})
        return message, ack

    def test_an_uplink_is_stored_and_acked_by_a_downlink(self):
        body = {"state": "Charging", "why": "plugged"}
        self.uplink(record_payload("status:1:100:0", "status", body), f_port=12)
        message, ack = self.downlink_ack("status:1:100:0")
        self.assertEqual(message["fPort"], 12)  # the uplink's FPort
        record = self.event(event="record", key="status:1:100:0")
        self.assertEqual((record["link"], record["dev_eui"], record["application_id"], record["f_port"],
                          record["device"], record["body"]),
                         ("lorawan", DEV_EUI, self.lns.application_id, 12, DEVICE, body))
        acked = self.event(event="ack", keys=["status:1:100:0"])
        self.assertEqual((acked["link"], acked["dev_eui"]), ("lorawan", DEV_EUI))
        self.assertEqual(self.pile.acks_naming("status:1:100:0"), [])  # not over MQTT
        device = self.report()[DEVICE]
        self.assertGreaterEqual(device["links"]["lorawan"], 1)
        self.assertGreaterEqual(device["records_by_link"]["lorawan"], 1)
        self.assertIn("%s/%s" % (self.lns.application_id, DEV_EUI), device["lorawan"])

    def test_compact_telemetry_is_stored_not_acked(self):
        example = support.hex_blocks()["compact-telemetry"]  # 23 bytes: CN470 DR1's whole payload
        frame = self.uplink(example[16:], mtype=5)
        event = self.event(event="telemetry", link="lorawan")
        self.assertEqual((len(frame), event["dev_eui"], event["connectors"][0]["power_w"]), (23, DEV_EUI, 7200))
        self.uplink(record_payload("alarm:500:0", "alarm", {}))
        self.downlink_ack("alarm:500:0")
        # Every downlink so far is an ack of one record's key: none for the telemetry.
        self.assertEqual(len(self.lns.acks()), len(self.lns.downlinks))
        self.assertTrue(all(len(ack["a"]) == 1 for *_, ack in self.lns.acks()))

    def test_a_second_delivery_by_the_network_server_is_dropped(self):
        frame = self.uplink(record_payload("alarm:200:0", "alarm", {"code": "door", "active": True}))
        self.lns.uplink(DEV_EUI, frame)  # delivered twice: same device, sequence and bytes
        self.uplink(record_payload("alarm:201:0", "alarm", {"code": "door", "active": False}))
        self.downlink_ack("alarm:201:0")
        seq = struct.unpack_from(">I", frame, 12)[0]
        self.assertEqual(self.event(event="duplicate", level="frame", seq=seq)["link"], "lorawan")
        self.downlink_ack("alarm:201:0")
        self.downlink_ack("alarm:200:0")  # acked once: the second delivery earned no ack
        self.assertGreaterEqual(self.report()[DEVICE]["frame_duplicates"], 1)

    def test_malformed_events_are_refused(self):
        eui = "70b3d57ed0ffffff"
        good = support.make_frame(3, DEVICE, self.pile.next_seq(), record_payload("alarm:300:0", "alarm", {}))
        event = self.lns.event(eui, good)
        bad = [b"not json", b"[1, 2]", json.dumps(dict(event, data="@@not base64@@")),
               json.dumps({k: v for k, v in event.items() if k != "data"}),
               json.dumps({k: v for k, v in event.items() if k != "fPort"}),
               json.dumps(dict(event, deviceInfo=dict(event["deviceInfo"], devEui="0000000000000001"))),
               json.dumps({k: v for k, v in event.items() if k != "deviceInfo"})]
        for payload in bad:
            self.lns.publish(eui, payload)
        self.lns.publish(eui, json.dumps(event))  # the server goes on
        self.downlink_ack("alarm:300:0", eui)
        self.event(event="ack", keys=["alarm:300:0"])  # printed after the refusals
        refused = [e for e in self.server.events.seen
                   if e["event"] == "refused" and e["reason"] == "bad_event" and e.get("dev_eui") == eui]
        self.assertEqual(len(refused), len(bad), refused)
        self.assertTrue(all(r["link"] == "lorawan" and r["detail"] for r in refused))
        report = self.report()
        self.assertGreaterEqual(sum(d["refusals"].get("bad_event", 0) for d in report.values()), len(bad))

    def test_a_record_in_fragments_over_several_uplinks(self):
        body = {"code": "meter.implausible", "text": "the meter went backwards by 12 Wh", "active": True}
        payload = record_payload("alarm:400:0", "alarm", body)
        data = payload + hashlib.sha256(payload).digest()
        per = MTU - 16 - 6
        count = -(-len(data) // per)
        self.assertGreater(count, 3)
        seqs = [self.pile.next_seq() for _ in range(count)]
        for index in [1, 0] + list(range(2, count)):  # not in order
            head = struct.pack(">HHH", 77, index, count)
            frame = support.make_frame(3, DEVICE, seqs[index], head + data[index * per:(index + 1) * per], flags=1)
            self.assertLessEqual(len(frame), MTU)
            self.lns.uplink(DEV_EUI, frame)
        self.downlink_ack("alarm:400:0")
        record = self.event(event="record", key="alarm:400:0")
        self.assertEqual((record["body"], record["link"], record["seq"]), (body, "lorawan", seqs[0]))

    def test_a_record_over_both_links_is_stored_once(self):
        payload = record_payload("op:T-9/confirmed", "operation", {"fen": 800})
        self.uplink(payload, mtype=2)  # over LoRaWAN first
        self.downlink_ack("op:T-9/confirmed")
        self.event(event="record", key="op:T-9/confirmed", link="lorawan")
        self.pile.send_frame(2, payload)  # the same record over 5G: a duplicate, acked over MQTT
        self.pile.wait(lambda: self.pile.acks_naming("op:T-9/confirmed"))
        self.event(event="duplicate", level="record", key="op:T-9/confirmed", link="mqtt")
        device = self.report()[DEVICE]
        self.assertEqual(device["keys"].count("op:T-9/confirmed"), 1)
        self.assertGreaterEqual(device["records_by_link"]["lorawan"], 1)
        self.assertGreaterEqual(device["links"]["mqtt"], 1)
        self.assertGreaterEqual(device["record_duplicates"], 1)

    def test_acks_carry_the_ledger_anchor_only_while_it_fits(self):
        self.uplink(record_payload("ledger:1", "ledger", {"seq": 1}), mtype=2)
        self.assertEqual(self.downlink_ack("ledger:1")[1].get("l"), 1)
        # 28 bytes of key: 50 bytes of ack frame alone, 53 with "l": 1; sent without "l".
        fits = "op:" + "x" * 25
        self.uplink(record_payload(fits, "operation", {}), mtype=2)
        self.assertNotIn("l", self.downlink_ack(fits)[1])
        self.assertIsNone(self.event(event="ack", keys=[fits])["l"])
        # 40 bytes of key: no ack fits 51 bytes; none is sent (the pile resends over 5G).
        long = "op:" + "y" * 37
        self.uplink(record_payload(long, "operation", {}), mtype=2)
        too_large = self.event(event="ack_too_large", key=long)
        self.assertEqual((too_large["bytes"], too_large["link"]), (62, "lorawan"))
        self.uplink(record_payload("ledger:2", "ledger", {"seq": 2}), mtype=2)
        self.assertEqual(self.downlink_ack("ledger:2")[1]["l"], 2)
        self.assertEqual(self.lns.acks_naming(long), [])
        self.assertIn(long, self.report()[DEVICE]["keys"])  # stored all the same


if __name__ == "__main__":
    unittest.main()
