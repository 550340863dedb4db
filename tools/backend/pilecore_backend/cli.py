"""Command line: serve, report, pki, broker, stack."""

import argparse
import json
import logging
import os
import signal
import sys
import threading

from . import broker, pki
from .frame import HEADER_SIZE
from .fragment import FRAGMENT_HEADER_SIZE
from .store import Store

MIN_FRAME = HEADER_SIZE + FRAGMENT_HEADER_SIZE + 1  # a fragment with one body byte
MAX_FRAME = HEADER_SIZE + 0xFFFF


def _max_frame(text):
    value = int(text)
    if not MIN_FRAME <= value <= MAX_FRAME:
        raise argparse.ArgumentTypeError("must be %d..%d" % (MIN_FRAME, MAX_FRAME))
    return value


def _serve_options(p, connection=True):
    if connection:
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--ca", required=True, help="the CA the broker's certificate chains to")
        p.add_argument("--cert", required=True, help="the back end's client certificate")
        p.add_argument("--key", required=True, help="its private key")
        p.add_argument("--db", required=True, help="the SQLite database")
        p.add_argument("--command-key", help="PEM P-256 private key that signs commands (3.4)")
    p.add_argument("--firmware-key", help="PEM P-256 key to sign a firmware image given without sig")
    p.add_argument("--max-frame", type=_max_frame, default=65536,
                   help="largest command frame; larger commands go as a transfer (default 65536)")
    p.add_argument("--command-timeout", type=float, default=60.0,
                   help="seconds to wait for a command's answer before sending the next (default 60)")
    p.add_argument("--client-id", help="MQTT client id (default pilecore-backend-<pid>)")


def parser():
    ap = argparse.ArgumentParser(prog="pilecore-backend", description=__doc__)
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = ap.add_subparsers(dest="cmd", required=True)
    _serve_options(sub.add_parser("serve", help="receive, store and ack up frames; send commands"))
    p = sub.add_parser("report", help="what the database holds, per device")
    p.add_argument("--db", required=True)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("pki", help="make a test PKI")
    p.add_argument("--dir", required=True)
    p = sub.add_parser("broker", help="run a loopback mosquitto with mutual TLS")
    p.add_argument("--dir", required=True)
    p.add_argument("--port", type=int, default=0, help="0: pick a free port")
    p = sub.add_parser("stack", help="pki + broker + serve, for a demo")
    p.add_argument("--dir", required=True)
    p.add_argument("--port", type=int, default=0)
    _serve_options(p, connection=False)
    return ap


def cmd_serve(args):
    from .server import Server
    return Server(args).run()


def cmd_report(args):
    if not os.path.exists(args.db):
        print("no database at %s" % args.db, file=sys.stderr)
        return 1
    store = Store(args.db)
    try:
        devices = store.report()
    finally:
        store.close()
    if args.json:
        print(json.dumps({"devices": devices}, indent=2))
        return 0
    for d in devices:
        print("device %s (%s)" % (d["device"], ", ".join(d["piles"] + ["LoRaWAN " + x for x in d["lorawan"]])
                                  or "no pile seen"))
        if d["device"] == "unknown":
            print("  refusals: %s" % _counts(d["refusals"]))
            continue
        print("  records: %d (%s)" % (sum(d["records"].values()), _counts(d["records"])))
        print("  duplicates: %d records, %d frames" % (d["record_duplicates"], d["frame_duplicates"]))
        print("  links: frames %s; records first over %s" % (_counts(d["links"]), _counts(d["records_by_link"])))
        print("  refusals: %s" % _counts(d["refusals"]))
        print("  ledger: highest seq held %s, acked as \"l\" %s" % (d["ledger_highest"], d["ledger_anchor"]))
        print("  compact telemetry frames: %d" % d["compact_telemetry_frames"])
        print("  commands: %d sent, %d answered" % (d["commands"], d["commands_answered"]))
        print("  keys:")
        for key in d["keys"]:
            print("    " + key)
    return 0


def _counts(counts):
    return ", ".join("%s %d" % kv for kv in sorted(counts.items())) or "none"


def cmd_pki(args):
    print(json.dumps(pki.make(args.dir)))
    return 0


def cmd_broker(args):
    files = pki.ensure(args.dir)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    proc, port = broker.start(args.dir, args.port, files)
    print(json.dumps({"event": "broker", "port": port}), flush=True)
    try:
        while not done.wait(0.5):
            if proc.poll() is not None:
                logging.error("mosquitto exited with status %d", proc.returncode)
                return 1
    finally:
        broker.stop(proc)
    return 0


def cmd_stack(args):
    from .server import Server
    files = pki.ensure(args.dir)
    mosquitto = broker.Controlled(args.dir, args.port, files)
    try:
        db = os.path.join(args.dir, "backend.db")
        print(json.dumps({"event": "stack", "port": mosquitto.port, "ca": files["ca"],
                          "device_cert": files["device_cert"], "device_key": files["device_key"],
                          "lns_cert": files["lns_cert"], "lns_key": files["lns_key"],
                          "command_public_key": files["command_public_key"], "db": db}), flush=True)
        args.host, args.port = "127.0.0.1", mosquitto.port
        args.ca, args.cert, args.key = files["ca"], files["backend_cert"], files["backend_key"]
        args.db, args.command_key = db, files["command_key"]
        server = Server(args)
        server.controls["broker"] = lambda value: _broker_line(mosquitto, value, server.events)
        return server.run()
    finally:
        mosquitto.stop()


def _broker_line(mosquitto, value, events):
    """The stack's stdin {"broker": "stop"} / {"broker": "start"}: an outage of the broker."""
    if value == "stop":
        done = mosquitto.stop()
        events("broker", state="stopped", **({} if done else {"already": True}))
    elif value == "start":
        done = mosquitto.start()
        events("broker", state="started", port=mosquitto.port, **({} if done else {"already": True}))
    else:
        raise ValueError('"broker" must be "stop" or "start"')


def main(argv=None):
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s pilecore-backend %(levelname)s %(message)s")
    return {"serve": cmd_serve, "report": cmd_report, "pki": cmd_pki, "broker": cmd_broker,
            "stack": cmd_stack}[args.cmd](args)
