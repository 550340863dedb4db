"""Test helpers: the examples of docs/protocol.md, and processes (broker, back end, fake pile)."""

import base64
import json
import os
import queue
import re
import signal
import ssl
import struct
import subprocess
import sys
import threading
import time
import uuid

import cbor2
import paho.mqtt.client as mqtt

HERE = os.path.dirname(os.path.abspath(__file__))
BACKEND_DIR = os.path.dirname(HERE)
LAUNCHER = os.path.join(BACKEND_DIR, "pilecore-backend")
PROTOCOL_MD = os.path.normpath(os.path.join(BACKEND_DIR, "..", "..", "docs", "protocol.md"))
WAIT = 60.0  # generous: the machine may be busy building


def protocol_text():
    with open(PROTOCOL_MD, encoding="utf-8") as f:
        return f.read()


def blocks():
    """The fenced blocks with a name: {name: (language, text)}."""
    out = {}
    for lang, name, body in re.findall(r"^```(\w+) ([\w-]+)\n(.*?)^```", protocol_text(), re.M | re.S):
        out[name] = (lang, body)
    return out


def hex_bytes(text):
    """A hex block's bytes: `|` only separates fields, `#` starts a comment."""
    out = bytearray()
    for line in text.splitlines():
        for token in line.split("#", 1)[0].replace("|", " ").split():
            if not re.fullmatch(r"[0-9A-Fa-f]{2}", token):
                raise ValueError("not a hex byte: %r" % token)
            out.append(int(token, 16))
    return bytes(out)


def hex_blocks():
    return {name: hex_bytes(body) for name, (lang, body) in blocks().items() if lang == "hex"}


def section(number):
    """The text of one '### <number>' section."""
    match = re.search(r"^### %s .*?(?=^##|\Z)" % re.escape(number), protocol_text(), re.M | re.S)
    return match.group(0)


def backend(*args, **kw):
    return subprocess.Popen([sys.executable, LAUNCHER] + list(args), **kw)


def run_backend(*args):
    return subprocess.run([sys.executable, LAUNCHER] + list(args), capture_output=True, text=True, timeout=WAIT)


class Lines:
    """Reads a process's stdout JSON lines in a thread; wait() finds the next matching one."""

    def __init__(self, stream):
        self.queue = queue.Queue()
        self.seen = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream):
        with stream:
            for line in stream:
                self.queue.put(json.loads(line))
        self.queue.put(None)

    def wait(self, pred, timeout=WAIT):
        """The first event (seen before or arriving) for which pred is true."""
        for event in self.seen:
            if pred(event):
                return event
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError("no such event within %ds; seen: %s" % (timeout, self.seen[-10:]))
            if event is None:
                raise AssertionError("the process ended; seen: %s" % self.seen[-10:])
            self.seen.append(event)
            if pred(event):
                return event


class Broker:
    def __init__(self, directory, port=0):
        self.proc = backend("broker", "--dir", directory, "--port", str(port),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError("the broker did not start")
        self.port = json.loads(line)["port"]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=WAIT)
        self.proc.stdout.close()


class Server:
    """`pilecore-backend serve` with commands on stdin and events from stdout."""

    def __init__(self, pki, port, db, *extra):
        self.stderr = open(db + ".stderr", "a")
        self.proc = backend("serve", "--port", str(port), "--ca", pki["ca"], "--cert", pki["backend_cert"],
                            "--key", pki["backend_key"], "--db", db, "--command-key", pki["command_key"], *extra,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        self.events = Lines(self.proc.stdout)
        self.events.wait(lambda e: e["event"] == "ready")

    def command(self, **request):
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()

    def stop(self):
        """SIGTERM; returns the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        status = self.proc.wait(timeout=WAIT)
        self.proc.stdin.close()
        self.stderr.close()
        return status


# The fake pile is written from the spec with the system's cbor2 and struct, not with the
# back end's own codec, so the two are checked against each other.

HEADER = struct.Struct(">BBHIII")
CLASS_TOPIC = {1: "control", 2: "transaction", 3: "status", 4: "telemetry", 5: "telemetry"}


def make_frame(mtype, device, seq, payload, flags=0, timestamp=None):
    ts = int(time.time()) if timestamp is None else timestamp
    return HEADER.pack(0x10 | flags, mtype, len(payload), device, ts, seq) + payload


def subscribed_client(client_id, ca, cert, key, port, topic, on_message, who):
    """A clean-session MQTT client with mutual TLS to the broker on 127.0.0.1:`port`, subscribed
    (again on every connection) to `topic` at QoS 1. Returns once the first subscription holds:
    the client, and the event each later subscription sets again."""
    client = mqtt.Client(client_id=client_id, clean_session=True)
    client.tls_set(ca_certs=ca, certfile=cert, keyfile=key, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.reconnect_delay_set(1, 2)
    client.on_connect = lambda c, u, f, rc: c.subscribe(topic, 1)
    subscribed = threading.Event()
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = on_message
    client.connect_async("127.0.0.1", port)
    client.loop_start()
    if not subscribed.wait(WAIT):
        raise AssertionError("%s did not subscribe" % who)
    return client, subscribed


class FakePile:
    """A pile's MQTT link and outbox: records resent (new frame, new sequence, same payload)
    every `retry` seconds until an ack names their key (3.1, 4)."""

    def __init__(self, pki, port, site, pile, device, retry=1.0):
        self.site, self.pile, self.device, self.retry = site, pile, device, retry
        self.lock = threading.Condition()
        self.seq = 0
        self.outbox = {}  # key -> (type, payload)
        self.acks = []  # decoded ack maps, with "seq"
        self.commands = []  # (header tuple, payload) of 0x82 frames
        self.client, self.subscribed = subscribed_client("pile-%s-%s" % (site, pile), pki["ca"], pki["device_cert"], pki["device_key"], port,
                                                         "pilecore/v1/%s/%s/down/cmd" % (site, pile), self._on_message, "the fake pile")
        self.stopping = threading.Event()
        threading.Thread(target=self._resend, daemon=True).start()

    def close(self):
        self.stopping.set()
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, client, userdata, msg):
        data = bytes(msg.payload)
        header = HEADER.unpack_from(data)
        assert len(data) == 16 + header[2], "a down frame's length field is wrong"
        with self.lock:
            if header[1] == 0x81:
                ack = cbor2.loads(data[16:])
                ack["seq"] = header[5]
                self.acks.append(ack)
                for key in ack["a"]:
                    self.outbox.pop(key, None)
            elif header[1] == 0x82:
                self.commands.append((header, data[16:]))
            self.lock.notify_all()

    def next_seq(self):
        with self.lock:
            self.seq += 1
            return self.seq

    def publish(self, mtype, data):
        self.client.publish("pilecore/v1/%s/%s/up/%s" % (self.site, self.pile, CLASS_TOPIC[mtype]), data, qos=1)

    def send_frame(self, mtype, payload, flags=0, seq=None):
        """Publish one frame; returns its bytes."""
        data = make_frame(mtype, self.device, self.next_seq() if seq is None else seq, payload, flags)
        self.publish(mtype, data)
        return data

    def send_record(self, key, kind, body, mtype=2):
        payload = cbor2.dumps({"k": key, "c": kind, "b": body}, canonical=True)
        with self.lock:
            self.outbox[key] = (mtype, payload)
        self.send_frame(mtype, payload)
        return payload

    def _resend(self):
        while not self.stopping.wait(self.retry):
            with self.lock:
                waiting = list(self.outbox.values())
            for mtype, payload in waiting:
                self.send_frame(mtype, payload)

    def wait(self, pred, timeout=WAIT):
        deadline = time.monotonic() + timeout
        with self.lock:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("fake pile: condition not met in %ds (acks %s, outbox %s)"
                                         % (timeout, self.acks[-5:], list(self.outbox)))
                self.lock.wait(left)

    def acks_naming(self, key):
        with self.lock:
            return [a for a in self.acks if key in a["a"]]


class FakeNetworkServer:
    """A LoRaWAN network server's MQTT integration, shaped like ChirpStack v4's (docs/protocol.md
    6.2), with the network server's certificate: it publishes uplink events and collects what
    the back end queues as downlinks."""

    def __init__(self, pki, port, application_id="a5d1e4b2-0c3f-4d7e-9a61-2f0e8c7b1d42"):
        self.application_id = application_id
        self.lock = threading.Condition()
        self.downlinks = []  # (topic, the command/down JSON)
        self.f_cnt = 0
        self.client, self.subscribed = subscribed_client("lns-%s" % uuid.uuid4().hex[:8], pki["ca"], pki["lns_cert"], pki["lns_key"], port,
                                                         "application/+/device/+/command/down", self._on_message,
                                                         "the fake network server")

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.downlinks.append((msg.topic, json.loads(msg.payload)))
            self.lock.notify_all()

    def topic(self, dev_eui):
        return "application/%s/device/%s/event/up" % (self.application_id, dev_eui)

    def event(self, dev_eui, frame, f_port=10):
        """An uplink event as ChirpStack v4 publishes it, carrying `frame`."""
        with self.lock:
            self.f_cnt += 1
            f_cnt = self.f_cnt
        return {"deduplicationId": str(uuid.uuid4()),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
                "deviceInfo": {"tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242", "tenantName": "pilecore",
                               "applicationId": self.application_id, "applicationName": "piles",
                               "deviceProfileId": "9b6a4f2e-1d3c-4b5a-8e7f-0a1b2c3d4e5f",
                               "deviceProfileName": "RAK3172 CN470", "deviceName": "pile-" + dev_eui[-4:],
                               "devEui": dev_eui},
                "devAddr": "00c4f1a2", "adr": True, "dr": 5, "fCnt": f_cnt, "fPort": f_port, "confirmed": False,
                "data": base64.b64encode(frame).decode("ascii"),
                "rxInfo": [{"gatewayId": "0016c001ff10a235", "rssi": -57, "snr": 10.5}],
                "txInfo": {"frequency": 486300000, "modulation": {"lora": {"bandwidth": 125000,
                                                                            "spreadingFactor": 7,
                                                                            "codeRate": "CR_4_5"}}}}

    def uplink(self, dev_eui, frame, f_port=10):
        self.publish(dev_eui, json.dumps(self.event(dev_eui, frame, f_port)))

    def publish(self, dev_eui, payload):
        self.client.publish(self.topic(dev_eui), payload, qos=1)

    def wait(self, pred, timeout=WAIT):
        deadline = time.monotonic() + timeout
        with self.lock:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("fake network server: condition not met in %ds (downlinks %s)"
                                         % (timeout, self.downlinks[-5:]))
                self.lock.wait(left)

    def acks(self, dev_eui=None):
        """The ack frames queued as downlinks: (topic, message JSON, frame bytes, header, ack map)."""
        out = []
        with self.lock:
            downlinks = list(self.downlinks)
        for topic, message in downlinks:
            if dev_eui is not None and message.get("devEui") != dev_eui:
                continue
            data = base64.b64decode(message["data"], validate=True)
            header = HEADER.unpack_from(data)
            if header[1] == 0x81:
                out.append((topic, message, data, header, cbor2.loads(data[16:])))
        return out

    def acks_naming(self, key, dev_eui=None):
        return [a for a in self.acks(dev_eui) if key in a[4]["a"]]
