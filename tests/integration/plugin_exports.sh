#!/bin/sh
# Every plugin .so in the given directories exports its entry symbol and nothing else
# (DESIGN.md, Plugins, rule 7). Anything more is a symbol the dynamic linker may bind across
# objects: a plugin's copy of a Boost or libstdc++ template interposing the core's or another
# plugin's. pilecore_add_plugin's version script is what keeps the list at one.
#   plugin_exports.sh DIR...
set -eu
checked=0
failed=0
for dir in "$@"; do
  for so in "$dir"/*.so; do
    [ -e "$so" ] || continue
    checked=$((checked + 1))
    # Defined dynamic symbols: global, weak and GNU-unique ones alike.
    extra=$(nm -D --defined-only "$so" | awk '{print $3}' | grep -v -x 'pilecore_plugin_v[0-9]*' || true)
    entries=$(nm -D --defined-only "$so" | awk '{print $3}' | grep -c -x 'pilecore_plugin_v[0-9]*' || true)
    if [ -n "$extra" ] || [ "$entries" -ne 1 ]; then
      failed=$((failed + 1))
      n=$(printf '%s\n' "$extra" | grep -c . || true)
      echo "FAIL $so: $entries entry symbol(s) and $n other export(s), for example:"
      printf '%s\n' "$extra" | head -n 5 | c++filt | sed 's/^/    /'
    fi
  done
done
[ "$checked" -gt 0 ] || { echo "no plugin found in: $*"; exit 1; }
echo "plugin exports: $checked plugin(s) checked, $failed with more than the entry symbol"
[ "$failed" -eq 0 ]
