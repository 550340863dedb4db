"""The back end's durable store (SQLite): records once per (device, key), frame de-duplication,
the ledger anchor, downlink counters, the commands sent, and which link (MQTT or LoRaWAN through
the network server) brought what.

Every change a frame causes is made in one transaction, committed before any ack for it is
published (docs/protocol.md 3.2: "Send it after the records are committed on your side").
"""

import json
import re
import sqlite3
import time

from . import cbor

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    device INTEGER PRIMARY KEY,
    down_seq INTEGER NOT NULL DEFAULT 0,     -- the last downlink frame sequence used
    command_seq INTEGER NOT NULL DEFAULT 0,  -- the last command sequence "q" used
    transfer_id INTEGER NOT NULL DEFAULT 0,  -- the last downlink transfer id used
    ledger_anchor INTEGER,                   -- the "l" acked: end of the run of ledger seqs held
    frame_duplicates INTEGER NOT NULL DEFAULT 0,
    compact_frames INTEGER NOT NULL DEFAULT 0,
    mqtt_frames INTEGER NOT NULL DEFAULT 0,     -- frames received per link (schema 1)
    lorawan_frames INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS piles (
    site TEXT NOT NULL, pile TEXT NOT NULL, device INTEGER NOT NULL, last_seen REAL NOT NULL,
    PRIMARY KEY (site, pile)
);
CREATE TABLE IF NOT EXISTS records (
    device INTEGER NOT NULL, key TEXT NOT NULL, type INTEGER NOT NULL, kind TEXT NOT NULL,
    body BLOB NOT NULL,  -- the record's "b", CBOR as received
    site TEXT NOT NULL, pile TEXT NOT NULL, frame_seq INTEGER NOT NULL, frame_time INTEGER NOT NULL,
    received REAL NOT NULL, duplicates INTEGER NOT NULL DEFAULT 0,
    link TEXT NOT NULL DEFAULT 'mqtt',  -- the link it first arrived on: mqtt or lorawan (schema 1)
    PRIMARY KEY (device, key)
);
CREATE TABLE IF NOT EXISTS ledger (
    device INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (device, seq)
);
CREATE TABLE IF NOT EXISTS lorawan (  -- where a device's LoRaWAN uplinks come from (6.2)
    application_id TEXT NOT NULL, dev_eui TEXT NOT NULL, device INTEGER NOT NULL,
    last_seen REAL NOT NULL, PRIMARY KEY (application_id, dev_eui)
);
CREATE TABLE IF NOT EXISTS frames_seen (
    device INTEGER NOT NULL, seq INTEGER NOT NULL, received REAL NOT NULL,
    PRIMARY KEY (device, seq)
);
CREATE INDEX IF NOT EXISTS frames_seen_received ON frames_seen (received);
CREATE TABLE IF NOT EXISTS refusals (
    device INTEGER NOT NULL,  -- -1 when the frame was too short to name one
    reason TEXT NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (device, reason)
);
CREATE TABLE IF NOT EXISTS telemetry (
    device INTEGER NOT NULL, connector INTEGER NOT NULL, time INTEGER NOT NULL,
    status TEXT NOT NULL, power_w INTEGER NOT NULL, meter_wh INTEGER NOT NULL,
    PRIMARY KEY (device, connector)
);
CREATE TABLE IF NOT EXISTS commands (
    device INTEGER NOT NULL, q INTEGER NOT NULL, command TEXT NOT NULL,
    site TEXT NOT NULL, pile TEXT NOT NULL,
    frame_seq INTEGER NOT NULL,  -- of fragment 0 for a transfer: the result's "seq"
    fragments INTEGER NOT NULL, sent REAL NOT NULL,
    result_key TEXT, result TEXT,  -- the command_result record's key and body (JSON)
    PRIMARY KEY (device, q)
);
"""

# PRAGMA user_version. 0: before the LoRaWAN link; 1: the columns marked "schema 1" above.
SCHEMA_VERSION = 1
# What each version added to a table that existed before it, to migrate an older database.
ADDED_COLUMNS = {
    1: [("devices", "mqtt_frames", "INTEGER NOT NULL DEFAULT 0"),
        ("devices", "lorawan_frames", "INTEGER NOT NULL DEFAULT 0"),
        # A record stored before version 1 came over MQTT, the only link then.
        ("records", "link", "TEXT NOT NULL DEFAULT 'mqtt'")],
}
LINKS = ("mqtt", "lorawan")

UNKNOWN_DEVICE = -1
LEDGER_KEY = re.compile(r"ledger:(0|[1-9][0-9]*)\Z")
ACCEPTED_RESULT_KEY = re.compile(r"cmd:([1-9][0-9]*)\Z")
# How long a frame's (device, sequence) is remembered to drop a second delivery of it.
FRAME_MEMORY_S = 24 * 3600


class Store:
    def __init__(self, path):
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a commit is on disk before it is acked
        self.db.executescript(SCHEMA)
        self._migrate()

    def _migrate(self):
        """Bring a database made by an older back end to SCHEMA_VERSION. SCHEMA made the tables
        that were missing (with every column); tables that existed get the columns added since."""
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version >= SCHEMA_VERSION:
            return
        with self.transaction():
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for table, column, decl in ADDED_COLUMNS.get(v, ()):
                    have = {row[1] for row in self.db.execute("PRAGMA table_info(%s)" % table)}
                    if column not in have:
                        self.db.execute("ALTER TABLE %s ADD COLUMN %s %s" % (table, column, decl))
            self.db.execute("PRAGMA user_version = %d" % SCHEMA_VERSION)

    def close(self):
        self.db.close()

    # Transactions: one per frame or command; `with store.transaction():`.
    def transaction(self):
        return _Transaction(self.db)

    def _device(self, device):
        self.db.execute("INSERT OR IGNORE INTO devices (device) VALUES (?)", (device,))

    def remember_pile(self, site, pile, device):
        self._device(device)
        self.db.execute("INSERT INTO piles VALUES (?, ?, ?, ?) ON CONFLICT (site, pile) DO UPDATE"
                        " SET device = excluded.device, last_seen = excluded.last_seen",
                        (site, pile, device, time.time()))

    def device_for(self, site, pile):
        row = self.db.execute("SELECT device FROM piles WHERE site = ? AND pile = ?", (site, pile)).fetchone()
        return row[0] if row else None

    def pile_of(self, device):
        """(site, pile) the device was last seen on over MQTT, or (None, None)."""
        row = self.db.execute("SELECT site, pile FROM piles WHERE device = ? ORDER BY last_seen DESC LIMIT 1",
                              (device,)).fetchone()
        return (row[0], row[1]) if row else (None, None)

    def remember_lorawan(self, application_id, dev_eui, device):
        self._device(device)
        self.db.execute("INSERT INTO lorawan VALUES (?, ?, ?, ?) ON CONFLICT (application_id, dev_eui) DO UPDATE"
                        " SET device = excluded.device, last_seen = excluded.last_seen",
                        (application_id, dev_eui, device, time.time()))

    def device_for_lorawan(self, application_id, dev_eui):
        row = self.db.execute("SELECT device FROM lorawan WHERE application_id = ? AND dev_eui = ?",
                              (application_id, dev_eui)).fetchone()
        return row[0] if row else None

    def count_frame(self, device, link):
        """One frame received over `link` (mqtt or lorawan) naming this device."""
        assert link in LINKS, link
        self._device(device)
        self.db.execute("UPDATE devices SET %s_frames = %s_frames + 1 WHERE device = ?" % (link, link), (device,))

    def frame_seen(self, device, seq):
        """Section 1: drop a second delivery of one frame. Returns True for a duplicate (and
        counts it); otherwise remembers the frame and returns False."""
        self._device(device)
        cur = self.db.execute("INSERT OR IGNORE INTO frames_seen VALUES (?, ?, ?)", (device, seq, time.time()))
        if cur.rowcount:
            return False
        self.db.execute("UPDATE devices SET frame_duplicates = frame_duplicates + 1 WHERE device = ?", (device,))
        return True

    def forget_old_frames(self, now=None):
        cutoff = (now if now is not None else time.time()) - FRAME_MEMORY_S
        self.db.execute("DELETE FROM frames_seen WHERE received < ?", (cutoff,))

    def refusal(self, device, reason):
        device = UNKNOWN_DEVICE if device is None else device
        self.db.execute("INSERT INTO refusals VALUES (?, ?, 1) ON CONFLICT (device, reason)"
                        " DO UPDATE SET count = count + 1", (device, reason))

    def put_record(self, device, site, pile, mtype, record, frame_seq, frame_time, link="mqtt"):
        """Store a record once per (device, key), whichever link brought it (4: the back end
        merges both); `link` is kept from its first arrival. Returns True when it is new, False
        when the key was already held (the duplicate is counted)."""
        assert link in LINKS, link
        self._device(device)
        cur = self.db.execute(
            "INSERT OR IGNORE INTO records (device, key, type, kind, body, site, pile, frame_seq,"
            " frame_time, received, link) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (device, record.key, mtype, record.kind, cbor.dumps(record.body), site or "", pile or "",
             frame_seq, frame_time, time.time(), link))
        if not cur.rowcount:
            self.db.execute("UPDATE records SET duplicates = duplicates + 1 WHERE device = ? AND key = ?",
                            (device, record.key))
            return False
        match = LEDGER_KEY.match(record.key)
        if match:
            self.db.execute("INSERT OR IGNORE INTO ledger VALUES (?, ?)", (device, int(match.group(1))))
            self._advance_ledger(device)
        return True

    def _advance_ledger(self, device):
        """The ledger anchor is the end of the run of seqs held from the first (seq 1, or 0 if
        the pile numbers from 0): never more than the back end holds without a gap."""
        anchor = self.ledger_anchor(device)
        if anchor is None:
            for first in (0, 1):
                if self._has_ledger(device, first):
                    anchor = first
                    break
            else:
                return
        while self._has_ledger(device, anchor + 1):
            anchor += 1
        self.db.execute("UPDATE devices SET ledger_anchor = ? WHERE device = ?", (anchor, device))

    def _has_ledger(self, device, seq):
        return self.db.execute("SELECT 1 FROM ledger WHERE device = ? AND seq = ?", (device, seq)).fetchone() is not None

    def ledger_anchor(self, device):
        row = self.db.execute("SELECT ledger_anchor FROM devices WHERE device = ?", (device,)).fetchone()
        return row[0] if row else None

    def put_telemetry(self, device, timestamp, readings):
        """Compact telemetry (3.3) is superseded by the next: keep the newest per connector."""
        self._device(device)
        self.db.execute("UPDATE devices SET compact_frames = compact_frames + 1 WHERE device = ?", (device,))
        for r in readings:
            self.db.execute(
                "INSERT INTO telemetry VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device, connector) DO UPDATE"
                " SET time = excluded.time, status = excluded.status, power_w = excluded.power_w,"
                " meter_wh = excluded.meter_wh WHERE excluded.time >= telemetry.time",
                (device, r.connector, timestamp, r.status_name, r.power_w, r.meter_wh))

    def _next(self, device, column, n=1, modulo=1 << 32):
        """Reserve n consecutive values of a per-device counter; returns the first."""
        self._device(device)
        last = self.db.execute("SELECT %s FROM devices WHERE device = ?" % column, (device,)).fetchone()[0]
        self.db.execute("UPDATE devices SET %s = ? WHERE device = ?" % column, ((last + n) % modulo, device))
        return (last + 1) % modulo

    def next_down_seq(self, device, n=1):
        """Section 1: the back end's frame counter for this device, +1 per frame, wrapping."""
        return self._next(device, "down_seq", n)

    def next_command_seq(self, device):
        return self._next(device, "command_seq", modulo=1 << 64)

    def next_transfer_id(self, device):
        return self._next(device, "transfer_id", modulo=1 << 16)

    def add_command(self, device, q, name, site, pile, frame_seq, fragments):
        self.db.execute("INSERT INTO commands (device, q, command, site, pile, frame_seq, fragments, sent)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (device, q, name, site, pile, frame_seq, fragments, time.time()))

    def match_result(self, device, key, body):
        """Attach a command_result record to the command it answers (3.4): `cmd:<q>` names an
        accepted command; a rejected one's `cmd:r<frame sequence>:...` is matched by the body's
        `seq` (the command frame's sequence). Returns (q, command name) or None."""
        match = ACCEPTED_RESULT_KEY.match(key)
        if match:
            row = self.db.execute("SELECT q, command FROM commands WHERE device = ? AND q = ?",
                                  (device, int(match.group(1)))).fetchone()
        elif isinstance(body, dict) and isinstance(body.get("seq"), int):
            row = self.db.execute("SELECT q, command FROM commands WHERE device = ? AND frame_seq = ?"
                                  " ORDER BY sent DESC LIMIT 1", (device, body["seq"])).fetchone()
        else:
            row = None
        if row is None:
            return None
        self.db.execute("UPDATE commands SET result_key = ?, result = ? WHERE device = ? AND q = ?",
                        (key, json.dumps(cbor.to_json(body)), device, row[0]))
        return row

    def report(self):
        """Per device: records by kind and by the link they first came on, frames per link,
        duplicates, refusals by reason, the ledger, the keys."""
        devices = {}

        def entry(device):
            return devices.setdefault(device, {
                "device": device, "piles": [], "records": {}, "record_duplicates": 0,
                "frame_duplicates": 0, "refusals": {}, "ledger_highest": None,
                "ledger_anchor": None, "compact_telemetry_frames": 0, "commands": 0,
                "commands_answered": 0, "keys": [],
                "links": {link: 0 for link in LINKS}, "records_by_link": {link: 0 for link in LINKS},
                "lorawan": []})

        q = self.db.execute
        for device, frame_dups, anchor, compact, mqtt, lorawan in q(
                "SELECT device, frame_duplicates, ledger_anchor, compact_frames, mqtt_frames, lorawan_frames"
                " FROM devices"):
            d = entry(device)
            d.update(frame_duplicates=frame_dups, ledger_anchor=anchor, compact_telemetry_frames=compact,
                     links={"mqtt": mqtt, "lorawan": lorawan})
        for site, pile, device in q("SELECT site, pile, device FROM piles ORDER BY site, pile"):
            entry(device)["piles"].append("%s/%s" % (site, pile))
        for device, kind, n, dups in q("SELECT device, kind, COUNT(*), SUM(duplicates) FROM records"
                                       " GROUP BY device, kind"):
            d = entry(device)
            d["records"][kind] = n
            d["record_duplicates"] += dups
        for device, link, n in q("SELECT device, link, COUNT(*) FROM records GROUP BY device, link"):
            entry(device)["records_by_link"][link] = n
        for application_id, dev_eui, device in q("SELECT application_id, dev_eui, device FROM lorawan"
                                                 " ORDER BY application_id, dev_eui"):
            entry(device)["lorawan"].append("%s/%s" % (application_id, dev_eui))
        for device, key in q("SELECT device, key FROM records ORDER BY device, key"):
            entry(device)["keys"].append(key)
        for device, highest in q("SELECT device, MAX(seq) FROM ledger GROUP BY device"):
            entry(device)["ledger_highest"] = highest
        for device, reason, n in q("SELECT device, reason, count FROM refusals ORDER BY reason"):
            entry("unknown" if device == UNKNOWN_DEVICE else device)["refusals"][reason] = n
        for device, n, answered in q("SELECT device, COUNT(*), COUNT(result) FROM commands GROUP BY device"):
            entry(device).update(commands=n, commands_answered=answered)
        return [devices[k] for k in sorted(devices, key=lambda k: (isinstance(k, str), k if isinstance(k, int) else 0))]


class _Transaction:
    def __init__(self, db):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb):
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        return False
