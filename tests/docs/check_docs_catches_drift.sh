#!/bin/sh
# The docs check must fail, and say where, on a page with each kind of drift it exists to catch
# (tests/docs/drifted.md): a test that passes on the real docs proves nothing if it would pass on
# anything.
#   check_docs_catches_drift.sh PILECTL PILECORED SOURCE_DIR
set -u
out=$(python3 "$3/tests/docs/check_docs.py" --pilectl "$1" --pilecored "$2" --source "$3" "$3/tests/docs/drifted.md" 2>&1)
status=$?
echo "$out"
[ "$status" -eq 1 ] || { echo "FAIL: the check exited $status on a drifted page, not 1"; exit 1; }
failed=0
expect() {
  printf '%s\n' "$out" | grep -q -- "$1" || { echo "FAIL: not reported: $1"; failed=1; }
}
expect "drifted.md:9: the site-file fragment does not validate"
expect "unknown key 'interval_ms' in 'plugins.meter-1.config'"
expect "drifted.md:20: .pilectl plugins crash. is not a valid command line"
expect "drifted.md:26: a command outside a \`\`\`sh block"
expect "drifted.md:31: a \`\`\`yaml block needs a marker"
expect "drifted.md:37: site YAML outside a \`\`\`yaml block"
expect "drifted.md:42: 'make reference': the Makefile has no such target"
expect "drifted.md:42: says the API is 1.0 now"
[ "$failed" -eq 0 ] && echo "docs check catches drift: 8 of 8 reported"
exit "$failed"
