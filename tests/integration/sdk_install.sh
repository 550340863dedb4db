#!/bin/sh
# Installs the build into a temporary prefix, builds the example plugin out of tree against
# that prefix only, and checks that pilectl lists it and pilecored loads and runs it.
set -eu
build=$1
src=$2
work=$(mktemp -d "${TMPDIR:-/tmp}/pilecore-sdk.XXXXXX")
trap 'rm -rf "$work"' EXIT
prefix="$work/prefix"

echo "== install into $prefix"
cmake --install "$build" --prefix "$prefix" >/dev/null

# The example must see nothing of the source tree: copy it alone.
cp -r "$src/examples/hello-sensor" "$work/hello-sensor"

echo "== build examples/hello-sensor with find_package(pilecore)"
cmake -S "$work/hello-sensor" -B "$work/hello-build" -G Ninja -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CXX_FLAGS="-Wall -Wextra -Werror" >/dev/null
cmake --build "$work/hello-build" >/dev/null
ctest --test-dir "$work/hello-build" --output-on-failure >"$work/hello-tests.txt" 2>&1 ||
  { cat "$work/hello-tests.txt"; echo "hello-sensor's unit tests failed"; exit 1; }
tail -n 3 "$work/hello-tests.txt"
ctest --test-dir "$work/hello-build" -N | grep -q 'Total Tests: [1-9]' || { echo "hello-sensor's unit tests were not built"; exit 1; }
cmake --install "$work/hello-build" >/dev/null
plugin_dir=$(find "$prefix" -type d -path '*/pilecore/plugins')
test -f "$plugin_dir/hello-sensor.so" || { echo "hello-sensor.so was not installed into $plugin_dir"; exit 1; }
# Its only export is the entry alias: no weak Boost or libstdc++ instance either.
"$src/tests/integration/plugin_exports.sh" "$plugin_dir"

echo "== build it again with pkg-config alone"
PKG_CONFIG_PATH=$(dirname "$(find "$prefix" -name pilecore.pc)")
export PKG_CONFIG_PATH
# shellcheck disable=SC2046
mkdir "$work/pc"
g++ $(pkg-config --cflags pilecore) $(pkg-config --variable=plugin_cflags pilecore) -shared -fPIC -Wall -Wextra -Werror -o "$work/pc/hello-sensor.so" \
  "$work/hello-sensor/hello_sensor.cpp" $(pkg-config --libs pilecore) $(pkg-config --variable=plugin_ldflags pilecore)
"$src/tests/integration/plugin_exports.sh" "$work/pc"

echo "== pilectl (installed) lists and shows it"
"$prefix/bin/pilectl" plugins list | tee "$work/list.txt"
# The API column is the installed SDK's version, which the plugin was just built against.
api="$(sed -n 's/^#define PILECORE_API_MAJOR //p' "$prefix/include/pilecore/version.hpp").$(sed -n 's/^#define PILECORE_API_MINOR //p' "$prefix/include/pilecore/version.hpp")"
grep -q "^hello-sensor  *sensor  *1.0.0  *$api  " "$work/list.txt"
"$prefix/bin/pilectl" plugins show hello-sensor | grep -q 'alarm_above_c'

echo "== pilecored (installed) loads and runs it"
echo 47500 > "$work/temp"
cat > "$work/site.yaml" <<YAML
site:
  id: SDK-TEST
  name: SDK test
  location: {lat: 31.2, lon: 121.5}
  timezone: Asia/Shanghai
connectors:
  - {id: 1, type: gbt-ac, max_power_w: 7000}
plugins:
  soc:
    plugin: hello-sensor
    config: {path: $work/temp, interval_ms: 100}
  power-1:
    plugin: sim-power
    connector: 1
YAML
"$prefix/bin/pilectl" config validate "$work/site.yaml"

echo "== its validate runs in pilectl config validate (the descriptor's validate entry point)"
sed 's|path: [^,]*,|path: relative/temp,|' "$work/site.yaml" > "$work/bad-site.yaml"
if "$prefix/bin/pilectl" config validate "$work/bad-site.yaml" 2>"$work/bad.txt"; then
  echo "a relative path was accepted"; exit 1
fi
grep -q "bad-site.yaml:11:20: error: 'plugins.soc.config.path': 'relative/temp' is not an absolute path" "$work/bad.txt" ||
  { cat "$work/bad.txt"; echo "the plugin's validate did not report at the path key"; exit 1; }
"$prefix/bin/pilecored" --config "$work/site.yaml" --state-dir "$work/state" --log-level debug 2>"$work/log" &
pid=$!
i=0
until grep -q 'ready: site SDK-TEST' "$work/log"; do
  i=$((i + 1))
  [ $i -lt 100 ] || { cat "$work/log"; kill $pid; echo "pilecored never became ready"; exit 1; }
  sleep 0.1
done
sleep 0.3
kill -TERM $pid
wait $pid
cat "$work/log"
grep -q "\[sensor:hello-sensor:soc\] up: $work/temp" "$work/log"

echo "== the example payment method, built out of tree, takes a PIN, a pending capture and two refunds"
cp -r "$src/examples/hello-payment" "$work/hello-payment"
# No build type given: the example's own default applies.
cmake -S "$work/hello-payment" -B "$work/pay-build" -G Ninja -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_CXX_FLAGS="-Wall -Wextra -Werror" >/dev/null
grep -q '^CMAKE_BUILD_TYPE:STRING=RelWithDebInfo$' "$work/pay-build/CMakeCache.txt" ||
  { grep CMAKE_BUILD_TYPE "$work/pay-build/CMakeCache.txt"; echo "the example set no default build type"; exit 1; }
cmake --build "$work/pay-build" >/dev/null
echo "== its unit tests, on the installed SDK's fake host (pilecore/testing/fake_host.hpp)"
ctest --test-dir "$work/pay-build" --output-on-failure >"$work/pay-tests.txt" 2>&1 ||
  { cat "$work/pay-tests.txt"; echo "the example's unit tests failed"; exit 1; }
tail -n 3 "$work/pay-tests.txt"
ctest --test-dir "$work/pay-build" -N | grep -q 'Total Tests: [1-9]' || { echo "the example's unit tests were not built"; exit 1; }
cmake --install "$work/pay-build" >/dev/null
test -f "$plugin_dir/hello-payment.so" || { echo "hello-payment.so was not installed into $plugin_dir"; exit 1; }
"$src/tests/integration/plugin_exports.sh" "$plugin_dir"
cat > "$work/pay.yaml" <<YAML
site:
  id: SDK-PAY
  name: SDK payment test
  location: {lat: 31.2, lon: 121.5}
  timezone: Asia/Shanghai
connectors:
  - {id: 1, type: gbt-dc, max_power_w: 60000}
plugins:
  power-1:
    plugin: sim-power
    connector: 1
    config: {arrive_after_s: 0, ev_ready_delay_ms: 0, battery_capacity_wh: 200000, initial_soc_pct: 10, tick_ms: 1000}
  members:
    plugin: hello-payment
    config: {opening_balance_fen: 30000, pin_above_fen: 5000, pin: "2468", settle_later: true, latency_ms: 20}
tariffs:
  plans:
    all:
      prices: {flat: {electricity: 69.50, service: 80.00}}
      periods: [{from: "00:00", to: "24:00", type: flat}]
payment: {default_method: members, preauth_fen: 20000}
YAML
"$prefix/bin/pilectl" config validate "$work/pay.yaml"
ctl() { "$prefix/bin/pilectl" "$@" --state-dir "$work/pay-state"; }
"$prefix/bin/pilecored" --config "$work/pay.yaml" --state-dir "$work/pay-state" --clock-speed 20 \
  --clock-start 2026-03-02T03:00:00Z --status-interval 0 2>"$work/pay.log" &
pid=$!
i=0
until ctl status 2>/dev/null | grep -q Preparing; do
  i=$((i + 1))
  [ $i -lt 100 ] || { cat "$work/pay.log"; kill $pid; echo "connector 1 never became Preparing"; exit 1; }
  sleep 0.1
done
# The hold is above pin_above_fen: the start waits for the PIN typed at the pile.
ctl session start 1 --token card:0457AB12 >"$work/start.txt" 2>&1 &
start=$!
i=0
until ctl session answer 1 --pin 2468 >/dev/null 2>&1; do
  i=$((i + 1))
  [ $i -lt 100 ] || { cat "$work/pay.log"; kill $pid; echo "the step-up never came"; exit 1; }
  sleep 0.1
done
wait $start || { cat "$work/start.txt" "$work/pay.log"; kill $pid; echo "the session did not start"; exit 1; }
txn=$(sed -n 's/.*session \([^ ]*\) started.*/\1/p' "$work/start.txt" | head -n 1)
[ -n "$txn" ] || { cat "$work/start.txt"; kill $pid; echo "no transaction id in the start reply"; exit 1; }
sleep 2  # 40 s of charging at 60 kW: about 1 yuan
ctl session stop 1 >"$work/stop.txt"
# settle_later: the capture was answered pending; the core asks again (5 s of clock time) and
# the second answer confirms it.
ops() {  # the receipt's operations as "kind state amount" lines
  python3 -c 'import json,sys
r = json.load(open(sys.argv[1]))
print("captured", r["captured_fen"])
for o in r["operations"]: print(o["kind"], o["state"], o["amount_fen"])' "$work/receipt.json"
}
i=0
until ctl receipt "$txn" --json >"$work/receipt.json" 2>&1 && ops | grep -q '^capture confirmed'; do
  i=$((i + 1))
  [ $i -lt 100 ] || { cat "$work/receipt.json" "$work/pay.log"; kill $pid; echo "the pending capture was never confirmed"; exit 1; }
  sleep 0.1
done
ctl refund "$txn" 30 --reason "short charge" >/dev/null
ctl refund "$txn" 20 >/dev/null
ctl receipt "$txn" --json >"$work/receipt.json"
[ "$(ops | grep -c '^refund confirmed')" -eq 2 ] || { ops; kill $pid; echo "the two refunds are not both confirmed"; exit 1; }
kill -TERM $pid
wait $pid
# The method's own book: debited by the capture, credited by the refunds.
captured=$(ops | sed -n 's/^captured //p')
balance=$(sed -n 's/^a 0457AB12 //p' "$work/pay-state/plugins/members/accounts")
[ "$balance" -eq $((30000 - captured + 50)) ] || { echo "balance $balance, captured $captured"; exit 1; }
! grep -q 0457AB12 "$work/pay.log" || { echo "the card id is in the log in clear"; exit 1; }
echo "sdk install test: 2 passed, 0 failed"
