"""`pilecore-backend serve`: the MQTT back end (docs/protocol.md sections 1-6).

Frames come over two links on one broker: the piles' own MQTT topics (6.1) and the LoRaWAN
network server's MQTT integration (6.2, ChirpStack v4's uplink events and downlink queue).
Both go through the same decode, de-duplication, reassembly and store; acks go back over the
link the record came on.

Threads: paho's network thread only queues what arrives; a stdin thread queues command lines;
the main thread does everything else (decode, reassemble, store, ack, commands), so the SQLite
connection and the reassembler have one user.
"""

import base64
import collections
import dataclasses
import json
import logging
import os
import queue
import re
import signal
import ssl
import sys
import threading
import time

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from . import cbor, fragment
from .frame import (ACK, COMMAND, CONTROL, HEADER_SIZE, TELEMETRY_COMPACT, TYPE_NAMES, UP_TYPES, Ack,
                    Frame, Refused, build_command, decode_frame, decode_payload, encode_ack, encode_frame)
from .store import Store

log = logging.getLogger("pilecore-backend")

UP_FILTER = "pilecore/v1/+/+/up/#"
# 6.2: the network server's uplink events (ChirpStack v4 MQTT integration) and its downlink queue.
LNS_FILTER = "application/+/device/+/event/up"
LNS_DOWN_TOPIC = "application/%s/device/%s/command/down"
FILTERS = (UP_FILTER, LNS_FILTER)
# 3.2: "over LoRaWAN a downlink carries 51 bytes at most, so one key per ack there".
LORAWAN_ACK_MAX = 51
DEV_EUI = re.compile(r"[0-9A-Fa-f]{16}\Z")
# 6.1: the class level of an up topic, by message type.
TOPIC_CLASS = {0x01: "control", 0x02: "transaction", 0x03: "status", 0x04: "telemetry", 0x05: "telemetry"}
# An ack frame's largest size. 3.2 bounds nothing but a frame's 65535 payload bytes; acks are
# split into several frames (acks may be repeated) to keep each frame small.
ACK_FRAME_MAX = 4096
BATCH = 256  # up frames handled before the acks they earned are published
FORBIDDEN_IN_IDS = set("/+#")


@dataclasses.dataclass(frozen=True)
class Origin:
    """Where an up frame came from, and so where the acks it earns go: a pile's own MQTT topics
    (site, pile) or the network server (application id, DevEUI, FPort)."""
    link: str  # "mqtt" or "lorawan"
    site: str = None
    pile: str = None
    application_id: str = None
    dev_eui: str = None
    f_port: int = None


class BadEvent(ValueError):
    """A network server event that does not carry a frame as 6.2 describes."""


def parse_lns_event(topic, data):
    """An uplink event of the network server (ChirpStack v4's `event/up` JSON): the Origin and
    the frame (the base64 `data`). Raises BadEvent."""
    parts = topic.split("/")
    if len(parts) != 6 or parts[0] != "application" or parts[2] != "device" or parts[4:] != ["event", "up"]:
        raise BadEvent("not application/<applicationId>/device/<devEui>/event/up")
    application_id, dev_eui = parts[1], parts[3]
    try:
        event = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise BadEvent("not JSON: %s" % exc) from exc
    if not isinstance(event, dict):
        raise BadEvent("not a JSON object")
    info = event.get("deviceInfo")
    if not isinstance(info, dict):
        raise BadEvent("no deviceInfo object")
    if info.get("applicationId") != application_id or info.get("devEui") != dev_eui:
        raise BadEvent("deviceInfo's applicationId and devEui are not the topic's")
    if not DEV_EUI.match(dev_eui):
        raise BadEvent("devEui is not 16 hex digits")
    f_port = event.get("fPort")
    if not isinstance(f_port, int) or isinstance(f_port, bool) or not 1 <= f_port <= 223:
        raise BadEvent("fPort must be an integer 1..223")
    text = event.get("data")
    if not isinstance(text, str) or not text:
        raise BadEvent("no data")
    try:
        frame = base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise BadEvent("data is not base64: %s" % exc) from exc
    return Origin("lorawan", application_id=application_id, dev_eui=dev_eui, f_port=f_port), frame


class Events:
    """One JSON object per line on stdout, flushed."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.lock = threading.Lock()

    def __call__(self, event, **fields):
        line = json.dumps(dict(event=event, **fields))
        with self.lock:
            self.stream.write(line + "\n")
            self.stream.flush()


def load_private_key(path):
    with open(path, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("%s is not a P-256 private key" % path)
    return key


def json_to_cbor_args(value):
    """Command arguments from JSON: {"$hex": "..."} and {"$file": "path"} become byte strings
    (the firmware command's `image` and `sig`), everything else is taken as it is."""
    if isinstance(value, dict):
        if len(value) == 1 and "$hex" in value:
            return bytes.fromhex(value["$hex"])
        if len(value) == 1 and "$file" in value:
            with open(value["$file"], "rb") as f:
                return f.read()
        return {k: json_to_cbor_args(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_to_cbor_args(v) for v in value]
    return value


class Server:
    def __init__(self, args, events=None, controls=None):
        self.args = args
        # stdin lines {"<name>": value} handled by controls[name](value) instead of as commands
        # (the stack's {"broker": "stop"|"start"}).
        self.controls = controls if controls is not None else {}
        self.events = events or Events()
        self.store = Store(args.db)
        self.command_key = load_private_key(args.command_key) if args.command_key else None
        self.firmware_key = load_private_key(args.firmware_key) if args.firmware_key else None
        self.reassembler = fragment.Reassembler()
        self.inbox = queue.Queue()
        self.pushback = None  # an item taken from the inbox while batching, handled next
        self.ready = False
        self.stopping = False
        # 3.4: "send the next one after the previous one's answer": per device, the command in
        # flight (q, sent at) and those waiting for it. emergency_stop never waits.
        self.in_flight = {}
        self.waiting = collections.defaultdict(collections.deque)
        self.last_prune = 0.0
        self.client = self._client()

    # MQTT

    def _client(self):
        client = mqtt.Client(client_id=self.args.client_id or "pilecore-backend-%d" % os.getpid(),
                             clean_session=True, protocol=mqtt.MQTTv311)
        client.tls_set(ca_certs=self.args.ca, certfile=self.args.cert, keyfile=self.args.key,
                       cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.reconnect_delay_set(min_delay=1, max_delay=2)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = lambda c, u, msg: self.inbox.put(("up", msg.topic, bytes(msg.payload)))
        return client

    def _on_connect(self, client, userdata, flags, rc):
        if rc != 0:
            log.warning("broker refused the connection: %s", mqtt.connack_string(rc))
            return
        log.info("connected to %s:%d", self.args.host, self.args.port)
        # A clean session: subscribe again on every connection (6.1), to both links' topics.
        client.subscribe([(f, 1) for f in FILTERS])

    def _on_subscribe(self, client, userdata, mid, granted_qos):
        refused = [f for f, q in zip(FILTERS, granted_qos) if q == 0x80]
        for f in refused:
            log.error("the broker refused the subscription to %s", f)
        if not refused:
            self.inbox.put(("subscribed",))

    def _on_disconnect(self, client, userdata, rc):
        if not self.stopping:
            log.warning("disconnected from the broker (%s); reconnecting", mqtt.error_string(rc))
            self.events("disconnected")

    def publish(self, site, pile, data):
        """Downlink frames go to the pile's down/cmd, QoS 1, retain false (6.1). paho keeps a
        QoS 1 message queued while disconnected and sends it after reconnecting."""
        self.client.publish("pilecore/v1/%s/%s/down/cmd" % (site, pile), data, qos=1, retain=False)

    def publish_lorawan(self, origin, data):
        """A downlink frame for the network server's queue (6.2): ChirpStack v4's command/down
        JSON, on the FPort the uplink used; it goes in the receive window after an uplink."""
        message = {"devEui": origin.dev_eui, "confirmed": False, "fPort": origin.f_port,
                   "data": base64.b64encode(data).decode("ascii")}
        self.client.publish(LNS_DOWN_TOPIC % (origin.application_id, origin.dev_eui), json.dumps(message),
                            qos=1, retain=False)

    # Main loop

    def run(self):
        signal.signal(signal.SIGTERM, lambda *_: self.inbox.put(("stop",)))
        threading.Thread(target=self._read_stdin, name="stdin", daemon=True).start()
        self.client.connect_async(self.args.host, self.args.port, keepalive=30)
        self.client.loop_start()
        try:
            while True:
                item, self.pushback = self.pushback, None
                if item is None:
                    try:
                        item = self.inbox.get(timeout=1.0)
                    except queue.Empty:
                        pass
                if item is not None and item[0] in ("stop", "eof"):
                    log.info("stopping (%s)", "SIGTERM" if item[0] == "stop" else "end of stdin")
                    break
                self._housekeeping()
                if item is None:
                    continue
                if item[0] == "up":
                    self._handle_ups([item])
                elif item[0] == "command":
                    self._command_line(item[1])
                elif item[0] == "subscribed":
                    self.events("ready" if not self.ready else "resubscribed")
                    self.ready = True
        finally:
            self.stopping = True
            self.client.disconnect()
            self.client.loop_stop()
            self.store.close()
        return 0

    def _read_stdin(self):
        for line in sys.stdin:
            if line.strip():
                self.inbox.put(("command", line))
        self.inbox.put(("eof",))

    def _housekeeping(self):
        now = time.monotonic()
        for device, tid in self.reassembler.expire():
            with self.store.transaction():
                self.store.refusal(device, "timed_out")
            self.events("refused", reason="timed_out", device=device, detail="transfer %d" % tid)
        for device, (q, sent) in list(self.in_flight.items()):
            if now - sent >= self.args.command_timeout:
                self.events("command_timeout", device=device, q=q)
                del self.in_flight[device]
                self._send_waiting(device)
        if now - self.last_prune > 3600:
            self.last_prune = now
            with self.store.transaction():
                self.store.forget_old_frames()

    # Uplink

    def _handle_ups(self, items):
        """Handle a batch of up frames (those queued now), each committed on its own, then
        publish the acks they earned: one ack per pile and link with every key (3.2), one key
        per ack over LoRaWAN."""
        while len(items) < BATCH:
            try:
                nxt = self.inbox.get_nowait()
            except queue.Empty:
                break
            if nxt[0] != "up":
                self.pushback = nxt  # stop, eof or a command: the main loop's, in its turn
                break
            items.append(nxt)
        acks = collections.OrderedDict()  # (origin, device) -> keys, in arrival order
        for _, topic, data in items:
            try:
                if topic.startswith("application/"):
                    self._handle_lns_event(topic, data, acks)
                else:
                    self._handle_up(topic, data, acks)
            except Exception:  # a bug must cost one frame (rolled back, resent by the pile), not the server
                log.exception("failed on a message on %s", topic)
        for (origin, device), keys in acks.items():
            if origin.link == "lorawan":
                self._send_lorawan_acks(origin, device, keys)
            else:
                self._send_acks(origin.site, origin.pile, device, keys)

    def _handle_up(self, topic, data, acks):
        parts = topic.split("/")
        if len(parts) != 6:
            log.warning("ignored a message on %s: not pilecore/v1/<site>/<pile>/up/<class>", topic)
            return
        self._handle_frame(Origin("mqtt", site=parts[2], pile=parts[3]), data, acks, topic_class=parts[5])

    def _handle_lns_event(self, topic, data, acks):
        """6.2: an uplink event of the network server carries one frame in its `data`."""
        try:
            origin, frame = parse_lns_event(topic, data)
        except BadEvent as exc:
            parts = topic.split("/")
            application_id, dev_eui = (parts[1], parts[3]) if len(parts) == 6 else (None, None)
            with self.store.transaction():
                device = self.store.device_for_lorawan(application_id, dev_eui)
                self.store.refusal(device, "bad_event")
            log.warning("refused a network server event on %s: %s", topic, exc)
            self.events("refused", reason="bad_event", detail=str(exc), link="lorawan",
                        application_id=application_id, dev_eui=dev_eui, device=device)
            return
        self._handle_frame(origin, frame, acks)

    def _where(self, origin, device):
        """The fields that say where a frame came from, for events. A LoRaWAN frame's site and
        pile are those the device last used over MQTT (None when it has not)."""
        if origin.link == "mqtt":
            return dict(link="mqtt", site=origin.site, pile=origin.pile)
        site, pile = self.store.pile_of(device) if device is not None else (None, None)
        return dict(link="lorawan", site=site, pile=pile, application_id=origin.application_id,
                    dev_eui=origin.dev_eui, f_port=origin.f_port)

    def _origin_device(self, origin):
        if origin.link == "mqtt":
            return self.store.device_for(origin.site, origin.pile)
        return self.store.device_for_lorawan(origin.application_id, origin.dev_eui)

    def _handle_frame(self, origin, data, acks, topic_class=None):
        """One up frame from either link: decode, drop a second delivery, reassemble, store."""
        with self.store.transaction():
            try:
                frame = decode_frame(data)
            except Refused as exc:
                # Counted against the header's device id when its bytes arrived, else against
                # the device last seen on this topic or DevEUI (section 7 counts by reason only).
                device = int.from_bytes(data[4:8], "big") if len(data) >= 8 else self._origin_device(origin)
                if device is not None:
                    self.store.count_frame(device, origin.link)
                return self._refused(exc, origin, device)
            self.store.count_frame(frame.device, origin.link)
            where = self._where(origin, frame.device)
            if frame.type not in UP_TYPES:
                # Section 7: a frame of the other direction is ignored and counted apart.
                self.store.refusal(frame.device, "wrong_direction")
                self.events("refused", reason="wrong_direction", device=frame.device,
                            detail="%s frame on an up topic" % TYPE_NAMES[frame.type], **where)
                return
            if origin.link == "mqtt":
                if TOPIC_CLASS[frame.type] != topic_class:
                    log.warning("a %s frame of device %d on %s/%s up/%s", TYPE_NAMES[frame.type], frame.device,
                                origin.site, origin.pile, topic_class)
                self.store.remember_pile(origin.site, origin.pile, frame.device)
            else:
                self.store.remember_lorawan(origin.application_id, origin.dev_eui, frame.device)
            if self.store.frame_seen(frame.device, frame.seq):
                self.events("duplicate", level="frame", device=frame.device, seq=frame.seq, **where)
                return
            try:
                if frame.is_fragment:
                    message = self.reassembler.add(frame)
                    if message is None:
                        return
                else:
                    message = fragment.Message(frame.type, frame.device, frame.timestamp, frame.seq, frame.payload)
                value = decode_payload(message.type, message.payload)
            except Refused as exc:
                return self._refused(exc, origin, frame.device)
            if message.type == TELEMETRY_COMPACT:
                self.store.put_telemetry(message.device, message.timestamp, value)
                self.events("telemetry", device=message.device, time=message.timestamp,
                            connectors=[dict(connector=r.connector, status=r.status_name, power_w=r.power_w,
                                             meter_wh=r.meter_wh) for r in value], **where)
                return
            self._record(origin, where, message, value, acks)

    def _record(self, origin, where, message, record, acks):
        new = self.store.put_record(message.device, where["site"], where["pile"], message.type, record,
                                    message.seq, message.timestamp, origin.link)
        common = dict(device=message.device, key=record.key, kind=record.kind, **where)
        if not new:
            self.events("duplicate", level="record", **common)
        else:
            self.events("record", type=TYPE_NAMES[message.type], seq=message.seq, time=message.timestamp,
                        body=cbor.to_json(record.body), **common)
            if message.type == CONTROL and record.kind == "command_result":
                matched = self.store.match_result(message.device, record.key, record.body)
                if matched:
                    q, name = matched
                    self.events("command_result", site=where["site"], pile=where["pile"], device=message.device,
                                q=q, command=name, key=record.key, result=cbor.to_json(record.body))
                    if self.in_flight.get(message.device, (None,))[0] == q:
                        del self.in_flight[message.device]
                        self._send_waiting(message.device)
        # Acknowledged again whether new or not: the pile resends until it sees the key (3.1),
        # over the link the record came on.
        keys = acks.setdefault((origin, message.device), [])
        if record.key not in keys:
            keys.append(record.key)

    def _refused(self, exc, origin, device):
        self.store.refusal(device, exc.reason)
        self.events("refused", reason=exc.reason, detail=exc.detail, device=device, **self._where(origin, device))

    def _send_acks(self, site, pile, device, keys):
        """Ack frames with `keys` (after their commit). "l" is the ledger anchor (store.py)."""
        limit = min(ACK_FRAME_MAX, self.args.max_frame) - HEADER_SIZE
        ledger = self.store.ledger_anchor(device)
        chunks, chunk = [], []
        for key in keys:
            if chunk and len(encode_ack(Ack(chunk + [key], ledger))) > limit:
                chunks.append(chunk)
                chunk = []
            chunk.append(key)
        chunks.append(chunk)
        with self.store.transaction():
            first = self.store.next_down_seq(device, len(chunks))
        now = int(time.time())
        for i, chunk in enumerate(chunks):
            seq = (first + i) & 0xFFFFFFFF
            self.publish(site, pile, encode_frame(Frame(ACK, device, now, seq, encode_ack(Ack(chunk, ledger)))))
            self.events("ack", link="mqtt", site=site, pile=pile, device=device, seq=seq, keys=chunk, l=ledger)

    def _send_lorawan_acks(self, origin, device, keys):
        """3.2 over LoRaWAN: one key per ack frame, each frame at most 51 bytes. "l" goes along
        while the frame still fits; a key whose ack does not fit even without it is not acked
        here: it is acked when the pile resends it over MQTT."""
        ledger = self.store.ledger_anchor(device)
        payloads = []
        for key in keys:
            payload = encode_ack(Ack([key], ledger))
            if ledger is not None and HEADER_SIZE + len(payload) > LORAWAN_ACK_MAX:
                payload = encode_ack(Ack([key], None))
            if HEADER_SIZE + len(payload) > LORAWAN_ACK_MAX:
                log.warning("not acking %r of device %d over LoRaWAN: its ack is %d bytes, over %d",
                            key, device, HEADER_SIZE + len(payload), LORAWAN_ACK_MAX)
                self.events("ack_too_large", device=device, key=key, bytes=HEADER_SIZE + len(payload),
                            **self._where(origin, device))
                continue
            payloads.append((key, payload, ledger if payload == encode_ack(Ack([key], ledger)) else None))
        if not payloads:
            return
        with self.store.transaction():
            first = self.store.next_down_seq(device, len(payloads))
        now = int(time.time())
        where = self._where(origin, device)
        for i, (key, payload, anchor) in enumerate(payloads):
            seq = (first + i) & 0xFFFFFFFF
            self.publish_lorawan(origin, encode_frame(Frame(ACK, device, now, seq, payload)))
            self.events("ack", device=device, seq=seq, keys=[key], l=anchor, **where)

    # Commands

    def _command_line(self, line):
        try:
            request = json.loads(line)
        except ValueError as exc:
            self.events("error", what="command", message="not JSON: %s" % exc, line=line.strip())
            return
        if isinstance(request, dict) and len(request) == 1 and next(iter(request)) in self.controls:
            name, value = next(iter(request.items()))
            try:
                self.controls[name](value)
            except (ValueError, RuntimeError, OSError) as exc:
                self.events("error", what=name, message=str(exc), line=line.strip())
            return
        try:
            if not isinstance(request, dict):
                raise ValueError("a command line is a JSON object")
            if "broker" in request and "command" not in request:
                raise ValueError("broker lines are for pilecore-backend stack, which runs the broker")
            site, pile, name = request["site"], request["pile"], request["command"]
            for ident in (site, pile):
                if not isinstance(ident, str) or not ident or FORBIDDEN_IN_IDS & set(ident):
                    raise ValueError("site and pile must be non-empty text without / + #")
            if not isinstance(name, str) or not 1 <= len(name.encode("utf-8")) <= 32:
                raise ValueError("command must be text of 1..32 bytes")
            args = json_to_cbor_args(request.get("args") or {})
            if not isinstance(args, dict):
                raise ValueError("args must be an object")
            device = request.get("device")
            if device is None:
                device = self.store.device_for(site, pile)
                if device is None:
                    raise ValueError("no device id given and no uplink seen from %s/%s" % (site, pile))
            if not isinstance(device, int) or isinstance(device, bool) or not 0 <= device < 1 << 32:
                raise ValueError("device must be an integer 0..2^32-1")
            # "t": the command's time (3.4), Unix seconds; default now. A pile on a simulated
            # clock (pilectl demo) checks it against its own clock, so its driver stamps it.
            stamp = request.get("t")
            if stamp is not None and (not isinstance(stamp, int) or isinstance(stamp, bool) or not 0 <= stamp < 1 << 32):
                raise ValueError("t must be an integer 0..2^32-1 (Unix seconds)")
            if self.command_key is None:
                raise ValueError("no --command-key: commands cannot be signed")
            if name == "firmware" and "sig" not in args and "image" in args:
                if self.firmware_key is None:
                    raise ValueError("firmware without sig needs --firmware-key")
                args["sig"] = self.firmware_key.sign(args["image"], ec.ECDSA(hashes.SHA256()))
        except (ValueError, KeyError, TypeError, OSError) as exc:
            self.events("error", what="command", message=str(exc), line=line.strip())
            return
        job = (site, pile, device, name, args, stamp)
        if device in self.in_flight and name != "emergency_stop":
            self.waiting[device].append(job)
            self.events("command_waiting", site=site, pile=pile, device=device, command=name,
                        behind=self.in_flight[device][0])
            return
        self._send_command(*job)

    def _send_waiting(self, device):
        if self.waiting[device]:
            self._send_command(*self.waiting[device].popleft())

    def _send_command(self, site, pile, device, name, args, stamp=None):
        """3.4: encode the body once, sign prefix + device id + body, send; a frame over
        --max-frame goes as a transfer of command frames (section 5)."""
        try:
            self._sign_and_send(site, pile, device, name, args, stamp)
        except ValueError as exc:  # rolled back: the sequences are not used
            self.events("error", what="command", message=str(exc), site=site, pile=pile, device=device,
                        command=name)

    def _sign_and_send(self, site, pile, device, name, args, stamp=None):
        now = int(time.time()) if stamp is None else stamp
        with self.store.transaction():
            q = self.store.next_command_seq(device)
            payload, _ = build_command(name, args, now, q, device, self.command_key)
            if HEADER_SIZE + len(payload) <= self.args.max_frame:
                seq = self.store.next_down_seq(device)
                frames = [encode_frame(Frame(COMMAND, device, now, seq, payload))]
            else:
                count = fragment.fragment_count(len(payload), self.args.max_frame)
                # The pile abandons a transfer over these bounds (section 5): do not send it.
                if len(payload) > fragment.MAX_PAYLOAD or count > fragment.MAX_FRAGMENTS:
                    raise ValueError("a command of %d bytes in %d fragments is over the pile's transfer"
                                     " bounds (%d bytes, %d fragments)"
                                     % (len(payload), count, fragment.MAX_PAYLOAD, fragment.MAX_FRAGMENTS))
                seq = self.store.next_down_seq(device, count)
                frames = fragment.split(COMMAND, device, now, seq, payload, self.args.max_frame,
                                        self.store.next_transfer_id(device))
            self.store.add_command(device, q, name, site, pile, seq, len(frames))
        for data in frames:
            self.publish(site, pile, data)
        self.in_flight[device] = (q, time.monotonic())
        self.events("command", site=site, pile=pile, device=device, q=q, command=name, seq=seq,
                    time=now, fragments=len(frames), bytes=len(payload))
