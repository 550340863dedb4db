"""The SQLite store: once per key, frame de-duplication, the ledger anchor, durable counters."""

import os
import sqlite3
import tempfile
import unittest

from pilecore_backend.frame import Record
from pilecore_backend.store import SCHEMA_VERSION, Store

DEVICE = 123456

# The tables of schema 0 (before the LoRaWAN link) that schema 1 changed, as they were made.
SCHEMA_0 = """
CREATE TABLE devices (
    device INTEGER PRIMARY KEY, down_seq INTEGER NOT NULL DEFAULT 0, command_seq INTEGER NOT NULL DEFAULT 0,
    transfer_id INTEGER NOT NULL DEFAULT 0, ledger_anchor INTEGER, frame_duplicates INTEGER NOT NULL DEFAULT 0,
    compact_frames INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE records (
    device INTEGER NOT NULL, key TEXT NOT NULL, type INTEGER NOT NULL, kind TEXT NOT NULL, body BLOB NOT NULL,
    site TEXT NOT NULL, pile TEXT NOT NULL, frame_seq INTEGER NOT NULL, frame_time INTEGER NOT NULL,
    received REAL NOT NULL, duplicates INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (device, key)
);
INSERT INTO devices (device, down_seq, frame_duplicates) VALUES (123456, 7, 2);
INSERT INTO records VALUES (123456, 'op:T-1/capture', 2, 'operation', x'a0', 's1', 'p1', 3, 4, 5.0, 1);
"""


class StoreTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.path = os.path.join(self.dir.name, "b.db")
        self.store = Store(self.path)

    def tearDown(self):
        self.store.close()
        self.dir.cleanup()

    def put(self, key, kind="ledger", body=None, device=DEVICE, link="mqtt"):
        with self.store.transaction():
            return self.store.put_record(device, "s1", "p1", 2, Record(key, kind, body or {}), 1, 2, link)

    def reopen(self):
        self.store.close()
        self.store = Store(self.path)

    def test_once_per_device_and_key(self):
        self.assertTrue(self.put("op:T-1/capture", "operation"))
        self.assertFalse(self.put("op:T-1/capture", "operation"))
        self.assertTrue(self.put("op:T-1/capture", "operation", device=DEVICE + 1))
        self.reopen()
        self.assertFalse(self.put("op:T-1/capture", "operation"))
        (d,) = [d for d in self.store.report() if d["device"] == DEVICE]
        self.assertEqual((d["records"], d["record_duplicates"], d["keys"]),
                         ({"operation": 1}, 2, ["op:T-1/capture"]))

    def test_a_rolled_back_record_is_not_held(self):
        with self.assertRaises(RuntimeError):
            with self.store.transaction():
                self.store.put_record(DEVICE, "s1", "p1", 2, Record("k", "c", 1), 1, 2)
                raise RuntimeError
        self.assertTrue(self.put("k", "c"))

    def test_frame_duplicates(self):
        with self.store.transaction():
            self.assertFalse(self.store.frame_seen(DEVICE, 7))
            self.assertTrue(self.store.frame_seen(DEVICE, 7))
            self.assertFalse(self.store.frame_seen(DEVICE + 1, 7))
        self.reopen()
        with self.store.transaction():
            self.assertTrue(self.store.frame_seen(DEVICE, 7))
            self.store.forget_old_frames(now=1e12)
            self.assertFalse(self.store.frame_seen(DEVICE, 7))

    def test_ledger_anchor_is_the_run_from_the_first(self):
        self.assertIsNone(self.store.ledger_anchor(DEVICE))
        self.put("ledger:2")
        self.put("ledger:3")
        self.assertIsNone(self.store.ledger_anchor(DEVICE))  # seq 1 missing: nothing to claim
        self.put("ledger:1")
        self.assertEqual(self.store.ledger_anchor(DEVICE), 3)
        self.put("ledger:5")
        self.assertEqual(self.store.ledger_anchor(DEVICE), 3)
        self.put("ledger:4")
        self.assertEqual(self.store.ledger_anchor(DEVICE), 5)
        self.put("ledger:07")  # not a ledger key of the form ledger:<seq>: opaque
        self.put("ledgerx:6")
        self.assertEqual(self.store.ledger_anchor(DEVICE), 5)
        self.reopen()
        self.assertEqual(self.store.ledger_anchor(DEVICE), 5)
        (d,) = [d for d in self.store.report() if d["device"] == DEVICE]
        self.assertEqual((d["ledger_highest"], d["ledger_anchor"]), (5, 5))

    def test_ledger_from_zero(self):
        self.put("ledger:0")
        self.assertEqual(self.store.ledger_anchor(DEVICE), 0)
        self.put("ledger:1")
        self.assertEqual(self.store.ledger_anchor(DEVICE), 1)

    def test_counters_survive_and_wrap(self):
        with self.store.transaction():
            self.assertEqual(self.store.next_down_seq(DEVICE), 1)
            self.assertEqual(self.store.next_down_seq(DEVICE, 3), 2)
            self.assertEqual(self.store.next_command_seq(DEVICE), 1)
        self.reopen()
        with self.store.transaction():
            self.assertEqual(self.store.next_down_seq(DEVICE), 5)
            self.assertEqual(self.store.next_command_seq(DEVICE), 2)
            self.store.db.execute("UPDATE devices SET down_seq = 4294967295")
            self.assertEqual(self.store.next_down_seq(DEVICE), 0)

    def test_command_results_match(self):
        with self.store.transaction():
            self.store.add_command(DEVICE, 1, "status", "s1", "p1", 40, 1)
            self.store.add_command(DEVICE, 2, "stop_session", "s1", "p1", 41, 1)
            self.assertEqual(self.store.match_result(DEVICE, "cmd:2", {"result": "ok"}), (2, "stop_session"))
            self.assertEqual(self.store.match_result(DEVICE, "cmd:r40:1767225610000:0",
                                                     {"seq": 40, "result": "rejected"}), (1, "status"))
            self.assertIsNone(self.store.match_result(DEVICE, "cmd:9", {}))
            self.assertIsNone(self.store.match_result(DEVICE + 1, "cmd:1", {}))

    def test_refusals_reported(self):
        with self.store.transaction():
            self.store.refusal(None, "truncated")
            self.store.refusal(DEVICE, "bad_version")
            self.store.refusal(DEVICE, "bad_version")
        report = {d["device"]: d for d in self.store.report()}
        self.assertEqual(report["unknown"]["refusals"], {"truncated": 1})
        self.assertEqual(report[DEVICE]["refusals"], {"bad_version": 2})


    def test_links_first_arrival_and_frames(self):
        self.assertTrue(self.put("status:1:5:0", "status", link="lorawan"))
        self.assertFalse(self.put("status:1:5:0", "status", link="mqtt"))  # also over 5G: held once
        self.assertTrue(self.put("op:T-1/capture", "operation", link="mqtt"))
        with self.store.transaction():
            for link in ("mqtt", "lorawan", "lorawan", "lorawan"):
                self.store.count_frame(DEVICE, link)
            self.store.remember_lorawan("app-1", "0011223344556677", DEVICE)
        self.assertEqual(self.store.device_for_lorawan("app-1", "0011223344556677"), DEVICE)
        self.assertIsNone(self.store.device_for_lorawan("app-2", "0011223344556677"))
        (d,) = [d for d in self.store.report() if d["device"] == DEVICE]
        self.assertEqual(d["links"], {"mqtt": 1, "lorawan": 3})
        self.assertEqual(d["records_by_link"], {"mqtt": 1, "lorawan": 1})
        self.assertEqual((d["record_duplicates"], d["lorawan"]), (1, ["app-1/0011223344556677"]))

    def test_a_schema_0_database_is_migrated(self):
        self.store.close()
        os.remove(self.path)
        old = sqlite3.connect(self.path)
        old.executescript(SCHEMA_0)
        old.close()
        self.store = Store(self.path)
        self.assertEqual(self.store.db.execute("PRAGMA user_version").fetchone()[0], SCHEMA_VERSION)
        (d,) = [d for d in self.store.report() if d["device"] == DEVICE]
        self.assertEqual((d["keys"], d["records_by_link"], d["links"], d["frame_duplicates"]),
                         (["op:T-1/capture"], {"mqtt": 1, "lorawan": 0}, {"mqtt": 0, "lorawan": 0}, 2))
        self.assertTrue(self.put("ledger:1", link="lorawan"))
        with self.store.transaction():
            self.assertEqual(self.store.next_down_seq(DEVICE), 8)  # the old counters are kept
            self.store.count_frame(DEVICE, "lorawan")
        self.reopen()  # opened again: nothing left to migrate
        (d,) = [d for d in self.store.report() if d["device"] == DEVICE]
        self.assertEqual((d["records_by_link"], d["links"]), ({"mqtt": 1, "lorawan": 1}, {"mqtt": 0, "lorawan": 1}))


if __name__ == "__main__":
    unittest.main()
