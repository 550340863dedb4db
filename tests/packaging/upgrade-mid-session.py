#!/usr/bin/env python3
"""A package upgrade while a car charges (tests/packaging/run, step 4; issue #13).

  upgrade-mid-session.py before ROOT WORK   # the installed (old) pilecored charges a car, and keeps running
  ... apt-get installs the newer packages over it (dpkg replaces the binaries under the running daemon) ...
  upgrade-mid-session.py after ROOT WORK    # as the postinst's restart: SIGTERM, then the new pilecored

`before` sets up a one-connector simulated site in ROOT (/tmp/upgrade: the site file, the socket;
/var/lib/pilecore-upgrade: the state and the device key), starts the installed pilecored on it the
way systemd does (user pilecore, Type=notify), waits until autostart has a session charging, and
leaves the daemon running; WORK/upgrade.json remembers its pid, the transaction and its energy.

`after` stops that daemon with SIGTERM (its session must be suspended, not ended), starts the
pilecored now installed, and checks that the same transaction resumes with the energy from
before, charges on, and stops with one bill: one transaction in the database, closed once,
captured once, its energy from both parts, and `pilectl ledger verify` OK.
"""
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time

SITE = """\
site: {id: PKG-UPGRADE, name: Upgrade mid-session, location: {lat: 31.2304, lon: 121.4737}, timezone: Asia/Shanghai}
connectors:
  - {id: 1, type: gbt-dc, max_power_w: 60000}
plugins:
  power-1:
    plugin: sim-power
    connector: 1
    # The vehicle stays plugged in while the pile restarts (its driver waits an hour).
    config: {arrive_after_s: 0, ev_ready_delay_ms: 0, battery_capacity_wh: 300000, initial_soc_pct: 5, driver_waits_s: 3600}
  sim:
    plugin: sim-payment
    config: {latency_ms: 0}
tariffs:
  decimals: 2
  plans:
    all:
      prices: {flat: {electricity: 69.50, service: 80.00}}
      periods: [{from: "00:00", to: "24:00", type: flat}]
  week: {mon: all, tue: all, wed: all, thu: all, fri: all, sat: all, sun: all}
payment: {default_method: sim, preauth_fen: 50000, autostart: true}
identity: {operator: Package Test}
"""
DIR = "/tmp/upgrade"
STATE = "/var/lib/pilecore-upgrade"
SOCKET = DIR + "/ctl.sock"


started = []  # the pids of the daemons this run started (and the old one, in `after`)


def fail(msg):
    # Nothing of this test keeps running in the root (it would keep its mounts busy).
    for pid in started:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    sys.exit(f"upgrade-mid-session: FAIL: {msg}")


def in_root(root, *args, user=None, check=True):
    cmd = ["chroot", root, "/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "HOME=/root"]
    if user:
        cmd += ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]
    r = subprocess.run(cmd + list(args), capture_output=True, text=True)
    if check and r.returncode != 0:
        fail(f"{' '.join(args)} exited with {r.returncode}:\n{r.stdout}{r.stderr}")
    return r


def pilectl_json(root, *args):
    r = in_root(root, "pilectl", "--config", DIR + "/site.yaml", "--state-dir", STATE, "--socket", SOCKET, "--json", *args, check=False)
    if r.returncode != 0:
        return None
    try:
        return json.loads(r.stdout)
    except json.JSONDecodeError:
        return None


def session(root):
    """(transaction, energy_wh, status) on connector 1, or None."""
    st = pilectl_json(root, "status")
    if not st:
        return None
    for c in st.get("connectors", []):
        if c.get("id") == 1 and "session" in c:
            return c["session"].get("transaction"), c["session"].get("energy_wh", 0), c.get("status")
    return None


def wait_for(what, pred, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    fail(f"{what}: not within {timeout:.0f} s")


def start_daemon(root, log_path, timeout):
    """pilecored as systemd starts it, in a session of its own (it outlives this script); its pid."""
    name = f"pilecore-upgrade-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    log = open(log_path, "a")
    # chroot, env and setpriv each exec the next: the pid is pilecored's.
    proc = subprocess.Popen(["chroot", root, "/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
                             f"NOTIFY_SOCKET=@{name}", "setpriv", "--reuid=pilecore", "--regid=pilecore", "--init-groups", "--",
                             "/usr/bin/pilecored", "--config", DIR + "/site.yaml", "--state-dir", STATE, "--socket", SOCKET],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    started.append(proc.pid)
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        r, _, _ = select.select([sock], [], [], 0.2)
        if r and "READY=1" in sock.recv(4096).decode(errors="replace").split("\n"):
            return proc
    if proc.poll() is None:
        proc.kill()
    fail(f"pilecored did not send READY=1 within {timeout} s; its log: {log_path}")


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not running: it waits for the parent this script no longer is.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def before(root, work, timeout):
    os.makedirs(root + DIR, exist_ok=True)
    with open(root + DIR + "/site.yaml", "w") as f:
        f.write(SITE)
    in_root(root, "chown", "pilecore:pilecore", DIR)
    in_root(root, "install", "-d", "-o", "pilecore", "-g", "pilecore", "-m", "750", STATE)
    in_root(root, "pilectl", "config", "validate", "--quiet", DIR + "/site.yaml")
    in_root(root, "pilectl", "keys", "init", "--config", DIR + "/site.yaml", "--state-dir", STATE, user="pilecore")
    version = in_root(root, "dpkg-query", "-W", "-f=${Version}", "pilecore").stdout
    proc = start_daemon(root, work + "/upgrade-daemon.log", timeout)
    print(f"pilecored {version} (pid {proc.pid}) is ready; waiting for autostart's session to charge", flush=True)
    txn, wh, status = wait_for("a session charging", lambda: (lambda s: s if s and s[2] == "Charging" and s[1] >= 100 else None)(session(root)), timeout)
    print(f"{txn} charges on connector 1: {wh} Wh so far, under pilecore {version}")
    with open(work + "/upgrade.json", "w") as f:
        json.dump({"pid": proc.pid, "transaction": txn, "energy_wh": wh, "version": version}, f)


def after(root, work, timeout):
    with open(work + "/upgrade.json") as f:
        was = json.load(f)
    pid, txn = was["pid"], was["transaction"]
    started.append(pid)
    version = in_root(root, "dpkg-query", "-W", "-f=${Version}", "pilecore").stdout
    if version == was["version"]:
        fail(f"pilecore is still {version}: the upgrade did not happen")
    if not alive(pid):
        fail(f"the old pilecored (pid {pid}) did not survive the package upgrade: {work}/upgrade-daemon.log")
    # The postinst's restart (dh_installsystemd --restart-after-upgrade): SIGTERM, then the new binary.
    still = session(root)
    print(f"the upgrade to {version} is unpacked; {txn} is at {still[1] if still else '?'} Wh; SIGTERM to the old pilecored (pid {pid})", flush=True)
    os.kill(pid, signal.SIGTERM)
    wait_for("the old pilecored to stop", lambda: not alive(pid), timeout)
    with open(work + "/upgrade-daemon.log") as f:
        log = f.read()
    if f"{txn}: suspended" not in log:
        fail(f"the old pilecored did not suspend {txn} on SIGTERM: {work}/upgrade-daemon.log")
    proc = start_daemon(root, work + "/upgrade-daemon.log", timeout)
    print(f"pilecored {version} (pid {proc.pid}) is ready", flush=True)
    s = wait_for(f"{txn} charging again", lambda: (lambda s: s if s and s[0] == txn and s[2] == "Charging" and s[1] > was["energy_wh"] else None)(session(root)), timeout)
    print(f"{txn} resumed under {version}: {s[1]} Wh so far (it had {was['energy_wh']} Wh when the upgrade began)", flush=True)
    resumed_wh = s[1]
    wait_for(f"{txn} charging on", lambda: (lambda s: s and s[1] >= resumed_wh + 100)(session(root)), timeout)
    stop = in_root(root, "pilectl", "--socket", SOCKET, "--json", "session", "stop", "1")
    stopped = json.loads(stop.stdout)
    if stopped.get("transaction") != txn:
        fail(f"session stop 1 stopped {receipt.get('transaction')}, not {txn}: {stop.stdout}")
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=timeout)
    if rc != 0:
        fail(f"the new pilecored exited with {rc} on SIGTERM")
    listed = pilectl_json(root, "transactions", "list")
    rows = listed if isinstance(listed, list) else []
    if len(rows) != 1 or rows[0].get("transaction") != txn:
        fail(f"expected the one transaction {txn}, the database has: {json.dumps(listed)}")
    row = rows[0]
    energy = row.get("energy_wh", 0)
    if row.get("status") != "closed" or row.get("outcome") != "completed" or energy < resumed_wh + 100:
        fail(f"{txn} is not completed with the energy of both parts (>= {resumed_wh + 100} Wh): {json.dumps(row)}")
    if row.get("capture_status") != "captured" or row.get("captured_fen") != row.get("total_fen"):
        fail(f"{txn} was not captured in full, once: {json.dumps(row)}")
    verify = in_root(root, "pilectl", "ledger", "verify", "--config", DIR + "/site.yaml", "--state-dir", STATE, check=False)
    print(verify.stdout.strip())
    if verify.returncode != 0 or "ledger OK" not in verify.stdout:
        fail(f"pilectl ledger verify: {verify.returncode}\n{verify.stdout}{verify.stderr}")
    print(f"{txn}: one transaction across the upgrade from {was['version']} to {version}: {energy} Wh, "
          f"billed {row.get('total_fen')} fen, captured {row.get('captured_fen')} fen; the ledger verifies")


def main():
    if len(sys.argv) < 4 or sys.argv[1] not in ("before", "after"):
        sys.exit(__doc__)
    timeout = float(os.environ.get("UPGRADE_TIMEOUT", "60"))
    (before if sys.argv[1] == "before" else after)(sys.argv[2], sys.argv[3], timeout)


main()
