"""The command line: usage errors, pki, report, stack, and a clean exit on stdin EOF."""

import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import unittest

from pilecore_backend import pki
from tests import support


def time_wait(port):
    """How many TCP connections of this local port are in TIME_WAIT (state 06 in /proc/net/tcp);
    None where /proc does not say."""
    n = None
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        n = n or 0
        for row in rows:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "06":
                n += 1
    return n


class CommandLine(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="pilecore-backend-cli-")

    def tearDown(self):
        shutil.rmtree(self.dir)

    def test_usage_errors_exit_2(self):
        self.assertEqual(support.run_backend().returncode, 2)
        self.assertEqual(support.run_backend("serve").returncode, 2)
        self.assertEqual(support.run_backend("nonsense").returncode, 2)
        self.assertEqual(support.run_backend("stack", "--dir", self.dir, "--max-frame", "10").returncode, 2)

    def test_pki_files_and_modes(self):
        result = support.run_backend("pki", "--dir", self.dir)
        self.assertEqual(result.returncode, 0, result.stderr)
        files = json.loads(result.stdout)
        for name, path in files.items():
            mode = stat.S_IMODE(os.stat(path).st_mode)
            if name.endswith("key") and name != "command_public_key":
                self.assertEqual(mode, 0o600, name)
        ok = subprocess.run(["openssl", "verify", "-CAfile", files["ca"], files["broker_cert"],
                             files["backend_cert"], files["device_cert"], files["lns_cert"]],
                            capture_output=True, text=True)
        self.assertEqual(ok.returncode, 0, ok.stdout + ok.stderr)
        text = subprocess.run(["openssl", "x509", "-noout", "-text", "-in", files["broker_cert"]],
                              capture_output=True, text=True).stdout
        self.assertIn("IP Address:127.0.0.1", text)
        self.assertIn("DNS:localhost", text)
        text = subprocess.run(["openssl", "x509", "-noout", "-subject", "-ext", "extendedKeyUsage", "-in",
                               files["lns_cert"]], capture_output=True, text=True).stdout
        self.assertIn("CN = pilecore network server", text)
        self.assertIn("TLS Web Client Authentication", text)

    def test_ensure_adds_the_network_server_files_to_an_older_directory(self):
        files = pki.make(self.dir)
        os.remove(files["lns_cert"])
        os.remove(files["lns_key"])  # as a directory made before the network server's files
        def read(path):
            with open(path, "rb") as f:
                return f.read()
        before = {name: read(files[name]) for name in ("ca", "device_cert", "command_key")}
        again = pki.ensure(self.dir)
        self.assertEqual({name: read(again[name]) for name in before}, before)
        self.assertEqual(stat.S_IMODE(os.stat(again["lns_key"]).st_mode), 0o600)
        ok = subprocess.run(["openssl", "verify", "-CAfile", again["ca"], again["lns_cert"]],
                            capture_output=True, text=True)
        self.assertEqual(ok.returncode, 0, ok.stdout + ok.stderr)

    def test_stack_then_report(self):
        proc = support.backend("stack", "--dir", self.dir, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
        events = support.Lines(proc.stdout)
        stack = events.wait(lambda e: e["event"] == "stack")
        events.wait(lambda e: e["event"] == "ready")
        files = {"ca": stack["ca"], "device_cert": stack["device_cert"], "device_key": stack["device_key"]}
        pile = support.FakePile(files, stack["port"], "demo", "pile-1", 42)
        try:
            pile.send_record("alarm:1:0", "alarm", {"code": "storage.low_disk", "active": True}, mtype=3)
            pile.wait(lambda: pile.acks_naming("alarm:1:0"))
        finally:
            pile.close()
        proc.stdin.close()  # stdin EOF: a clean exit, and the broker goes with it
        self.assertEqual(proc.wait(timeout=support.WAIT), 0)
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", stack["port"]), timeout=2).close()
        text = support.run_backend("report", "--db", stack["db"])
        self.assertEqual(text.returncode, 0, text.stderr)
        self.assertIn("device 42 (demo/pile-1)", text.stdout)
        self.assertIn("alarm:1:0", text.stdout)


    def test_stack_stops_and_starts_its_broker(self):
        proc = support.backend("stack", "--dir", self.dir, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
        events = support.Lines(proc.stdout)

        def line(**request):
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()

        def wait(**fields):
            return events.wait(lambda e: all(e.get(k) == v for k, v in fields.items()))

        stack = wait(event="stack")
        self.assertTrue(os.path.exists(stack["lns_cert"]) and os.path.exists(stack["lns_key"]))
        wait(event="ready")
        files = {k: stack[k] for k in ("ca", "device_cert", "device_key", "lns_cert", "lns_key")}
        pile = support.FakePile(files, stack["port"], "demo", "pile-1", 42)
        lns = None
        try:
            pile.send_record("status:1:1:0", "status", {"state": "Available"}, mtype=3)
            pile.wait(lambda: pile.acks_naming("status:1:1:0"))
            line(broker="start")
            self.assertEqual(wait(event="broker", state="started"), {"event": "broker", "state": "started",
                                                                      "port": stack["port"], "already": True})
            pile.subscribed.clear()
            line(broker="stop")
            self.assertEqual(wait(event="broker", state="stopped"), {"event": "broker", "state": "stopped"})
            with self.assertRaises(OSError):  # it has exited: nothing listens
                socket.create_connection(("127.0.0.1", stack["port"]), timeout=2).close()
            wait(event="disconnected")
            # Mosquitto closed the connections first: they linger on its port in TIME_WAIT.
            self.assertNotEqual(time_wait(stack["port"]), 0)
            line(broker="stop")
            wait(event="broker", state="stopped", already=True)
            line(broker="start")  # on the same port, at once: its old connections are in TIME_WAIT
            self.assertEqual(wait(event="broker", state="started", already=None),
                             {"event": "broker", "state": "started", "port": stack["port"]})
            wait(event="resubscribed")
            self.assertTrue(pile.subscribed.wait(support.WAIT))
            pile.send_record("status:1:2:0", "status", {"state": "Preparing"}, mtype=3)
            pile.wait(lambda: pile.acks_naming("status:1:2:0"))
            wait(event="record", key="status:1:2:0")
            # The network server's certificate from the stack's line works on its broker.
            lns = support.FakeNetworkServer(files, stack["port"])
            payload = support.cbor2.dumps({"k": "status:1:3:0", "c": "status", "b": {"state": "Charging"}})
            lns.uplink("70b3d57ed0000042", support.make_frame(3, 42, pile.next_seq(), payload))
            lns.wait(lambda: lns.acks_naming("status:1:3:0"))
            line(broker="restart")
            self.assertIn("stop", wait(event="error", what="broker")["message"])
        finally:
            pile.close()
            if lns:
                lns.close()
        proc.stdin.close()
        self.assertEqual(proc.wait(timeout=support.WAIT), 0)
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", stack["port"]), timeout=2).close()
        report = json.loads(support.run_backend("report", "--db", stack["db"], "--json").stdout)
        (device,) = [d for d in report["devices"] if d["device"] == 42]
        self.assertEqual(device["records_by_link"], {"mqtt": 2, "lorawan": 1})
        self.assertGreaterEqual(device["links"]["lorawan"], 1)


if __name__ == "__main__":
    unittest.main()
