#!/usr/bin/env bash
# Audit the locked dependencies (requirements.lock) for known vulnerabilities with pip-audit.
# Exit 1 when a locked package has a known vulnerability. pip-audit needs PyPI's advisory API (or OSV);
# when it cannot reach it, nothing is audited: the script says so and exits 0 (fail soft), or 2 with
# AUDIT_STRICT=1. Extra arguments go to pip-audit (e.g. -s osv). PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
STRICT="${AUDIT_STRICT:-0}"

unaudited() {
  echo "audit: NOT AUDITED - $1" >&2
  if [ "$STRICT" = "1" ]; then exit 2; fi
  exit 0
}

if ! "$PY" -m pip_audit --version >/dev/null 2>&1; then
  unaudited "pip-audit is not installed (pip install -e '.[dev]')"
fi
report="$(mktemp)"
trap 'rm -f "$report"' EXIT
status=0
"$PY" -m pip_audit -r requirements.lock --no-deps --disable-pip --progress-spinner off \
  --format json --output "$report" "$@" 2>/dev/null || status=$?
if [ ! -s "$report" ]; then
  unaudited "pip-audit could not query its advisory database (exit $status; is the network to PyPI up?)"
fi
status=0  # the report decides from here on
"$PY" - "$report" <<'PYEOF' || status=$?
import json
import sys

deps = json.load(open(sys.argv[1]))["dependencies"]
skipped = [d for d in deps if "skip_reason" in d]
vulnerable = [d for d in deps if d.get("vulns")]
for dep in vulnerable:
    for vuln in dep["vulns"]:
        fixes = ", ".join(vuln.get("fix_versions", [])) or "none yet"
        print(f"audit: {dep['name']} {dep['version']}: {vuln['id']} (fixed in {fixes})")
print(f"audit: {len(deps)} locked packages, {len(deps) - len(skipped)} audited, {len(skipped)} not found "
      f"in the advisory database, {len(vulnerable)} vulnerable")
if vulnerable:
    sys.exit(1)
if deps and len(skipped) == len(deps):
    sys.exit(3)  # nothing could be looked up: the advisory API is unreachable or filtered
PYEOF
case "$status" in
  0) exit 0 ;;
  3) unaudited "no locked package could be looked up in PyPI's advisory API (network filtered?)" ;;
  *) exit 1 ;;
esac
