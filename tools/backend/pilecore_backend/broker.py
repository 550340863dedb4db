"""`pilecore-backend broker`: a loopback Mosquitto with one mutual-TLS listener (6.1)."""

import os
import signal
import socket
import subprocess
import time

MOSQUITTO = "/usr/sbin/mosquitto"


def free_port():
    """A port nothing listens on now (another process may take it before mosquitto does)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_conf(directory, port, pki_files):
    lines = [
        "# written by pilecore-backend broker",
        "per_listener_settings false",
        "persistence false",
        "log_dest stderr",
        "set_tcp_nodelay true",  # 6.1: else a command waits behind the pile's delayed ACK
        "allow_anonymous true",  # the client certificate is the authentication
        "listener %d 127.0.0.1" % port,
        "cafile %s" % os.path.abspath(pki_files["ca"]),
        "certfile %s" % os.path.abspath(pki_files["broker_cert"]),
        "keyfile %s" % os.path.abspath(pki_files["broker_key"]),
        "require_certificate true",
        "use_identity_as_username true",
    ]
    if os.geteuid() == 0:
        # Run as root, mosquitto would switch to the mosquitto user, which cannot read the
        # 0600 keys; keep the user that made them.
        lines.insert(1, "user root")
    path = os.path.join(directory, "mosquitto.conf")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def start(directory, port, pki_files, timeout=30.0):
    """Start mosquitto in the foreground as a child; return (process, port) once it accepts."""
    port = port or free_port()
    conf = write_conf(directory, port, pki_files)
    proc = subprocess.Popen([MOSQUITTO, "-c", conf], stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError("mosquitto exited with status %d" % proc.returncode)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, port
        except OSError:
            if time.monotonic() > deadline:
                stop(proc)
                raise RuntimeError("mosquitto did not accept connections on port %d" % port)
            time.sleep(0.1)


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Controlled:
    """The stack's mosquitto, which its stdin can stop and start again on the same port with the
    same configuration (an outage for a demo). Mosquitto sets SO_REUSEADDR on its listener, so
    the port binds again at once, although the closed connections linger in TIME_WAIT."""

    def __init__(self, directory, port, pki_files):
        self.directory, self.pki_files = directory, pki_files
        self.proc, self.port = start(directory, port, pki_files)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """Stop it (SIGTERM, waiting until it has exited). Returns False when it was not running."""
        if self.proc is None:
            return False
        was = self.running()
        stop(self.proc)
        self.proc = None
        return was

    def start(self):
        """Start it again on its port once it accepts connections. Returns False when it was
        running already. Raises RuntimeError when it cannot start."""
        if self.running():
            return False
        self.proc = None
        self.proc, _ = start(self.directory, self.port, self.pki_files)
        return True
