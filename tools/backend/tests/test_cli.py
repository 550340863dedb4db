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


if __name__ == "__main__":
    unittest.main()
