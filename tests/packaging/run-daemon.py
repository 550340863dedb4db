#!/usr/bin/env python3
"""Starts pilecored in a root the way systemd would (Type=notify): as user pilecore, with a
NOTIFY_SOCKET this script listens on. Waits for READY=1, sends SIGTERM, expects exit status 0.

usage: run-daemon.py ROOT SITE_FILE [--timeout SECONDS] [--expect TEXT]...
  SITE_FILE is a path inside ROOT; every --expect TEXT must appear in the daemon's output.
"""
import argparse
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

p = argparse.ArgumentParser()
p.add_argument("root")
p.add_argument("site")
p.add_argument("--timeout", type=float, default=30)
p.add_argument("--expect", action="append", default=[])
a = p.parse_args()

# An abstract socket: no file, so no permissions to arrange inside the root.
name = f"pilecore-packaging-test-{os.getpid()}"
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind("\0" + name)

cmd = ["chroot", a.root, "/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
       f"NOTIFY_SOCKET=@{name}",
       "setpriv", "--reuid=pilecore", "--regid=pilecore", "--init-groups", "--",
       "/usr/bin/pilecored", "--config", a.site]
print("+", " ".join(cmd), flush=True)
start = time.monotonic()
proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
output = []

def pump():
    for line in proc.stdout:
        output.append(line)
        sys.stdout.write("  | " + line)
        sys.stdout.flush()

reader = threading.Thread(target=pump, daemon=True)
reader.start()

ready = False
messages = []
while time.monotonic() - start < a.timeout and proc.poll() is None:
    r, _, _ = select.select([sock], [], [], 0.2)
    if r:
        msg = sock.recv(4096).decode(errors="replace")
        messages.append(msg)
        print("  notify:", msg.replace("\n", " | "), flush=True)
        if "READY=1" in msg.split("\n"):
            ready = True
            break

if not ready:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    reader.join(2)
    sys.exit(f"run-daemon: pilecored did not send READY=1 within {a.timeout}s (exit status {proc.returncode})")

print(f"  ready after {time.monotonic() - start:.2f}s; SIGTERM", flush=True)
proc.send_signal(signal.SIGTERM)
try:
    rc = proc.wait(timeout=a.timeout)
except subprocess.TimeoutExpired:
    proc.kill()
    sys.exit("run-daemon: pilecored did not stop within the timeout after SIGTERM")
reader.join(2)
if rc != 0:
    sys.exit(f"run-daemon: pilecored exited with status {rc} after SIGTERM")
text = "".join(output)
missing = [e for e in a.expect if e not in text]
if missing:
    sys.exit(f"run-daemon: missing from the daemon's output: {missing}")
sock.setblocking(False)
try:
    while True:
        messages.append(sock.recv(4096).decode(errors="replace"))
except BlockingIOError:
    pass
stopping = any("STOPPING=1" in m.split("\n") for m in messages)
print(f"  stopped cleanly (exit 0){'' if not stopping else ', STOPPING=1 sent'}")
