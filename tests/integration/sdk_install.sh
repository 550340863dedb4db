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
cmake --install "$work/hello-build" >/dev/null
plugin_dir=$(find "$prefix" -type d -path '*/pilecore/plugins')
test -f "$plugin_dir/hello-sensor.so" || { echo "hello-sensor.so was not installed into $plugin_dir"; exit 1; }
# Its only export is the entry alias.
exports=$(nm -D --defined-only "$plugin_dir/hello-sensor.so" | awk '{print $3}' | grep -v '^_' | tr '\n' ' ')
[ "$exports" = "pilecore_plugin_v2 " ] || { echo "unexpected exports: $exports"; exit 1; }

echo "== build it again with pkg-config alone"
PKG_CONFIG_PATH=$(dirname "$(find "$prefix" -name pilecore.pc)")
export PKG_CONFIG_PATH
# shellcheck disable=SC2046
g++ $(pkg-config --cflags pilecore) $(pkg-config --variable=plugin_cflags pilecore) -shared -fPIC -Wall -Wextra -Werror -o "$work/hello-sensor.so" \
  "$work/hello-sensor/hello_sensor.cpp" $(pkg-config --libs pilecore)

echo "== pilectl (installed) lists and shows it"
"$prefix/bin/pilectl" plugins list | tee "$work/list.txt"
grep -q '^hello-sensor  *sensor  *1.0.0  *2.0  ' "$work/list.txt"
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
echo "sdk install test: 1 passed, 0 failed"
