#!/usr/bin/env bash
# Install the newest Home Assistant that runs on this Python into its own virtualenv,
# outside the repository, cached between runs (idempotent; each step time-bounded).
#
#   LPR_HA_VENV   where (default ~/.cache/lpr-gateway/ha-venv)
#   LPR_HA_VERSION  the release (default 2024.3.3: the last one for Python 3.11;
#                   2024.4 needs Python 3.12)
#   LPR_HA_PYTHON the interpreter (default python3.11, else python3)
#
# Besides homeassistant itself it installs the requirements of the integrations
# the interop test loads (HA would otherwise pip-install them at its first start,
# which is slow and untimed), resolved from HA's own manifests and pinned by HA's
# package_constraints.txt.
set -euo pipefail

VENV="${LPR_HA_VENV:-$HOME/.cache/lpr-gateway/ha-venv}"
VERSION="${LPR_HA_VERSION:-2024.3.3}"
PY="${LPR_HA_PYTHON:-$(command -v python3.11 || command -v python3)}"
# Bump when this script installs something new, so cached venvs are completed.
REVISION=3
STAMP="$VENV/.lpr-gateway-ready-$VERSION-r$REVISION"

if [[ -f "$STAMP" ]]; then
    echo "Home Assistant $VERSION already installed in $VENV"
    exit 0
fi

echo "installing Home Assistant $VERSION into $VENV (a few minutes, once)"
[[ -x "$VENV/bin/python" ]] || timeout 120 "$PY" -m venv "$VENV"
timeout 900 "$VENV/bin/pip" install --disable-pip-version-check -q "homeassistant==$VERSION"

# Requirements of the integrations the test's Home Assistant sets up: the ones
# bootstrap always loads, plus MQTT and the entity platforms discovery uses.
REQS="$(timeout 120 "$VENV/bin/python" - <<'PY'
import json
from pathlib import Path

import homeassistant
from homeassistant import bootstrap

root = Path(homeassistant.__file__).parent / "components"
wanted = set(bootstrap.DEFAULT_INTEGRATIONS) | set(bootstrap.CORE_INTEGRATIONS)
wanted |= set(bootstrap.LOGGING_INTEGRATIONS) | {"api", "http", "mqtt", "event", "image",
                                                 "sensor", "binary_sensor", "switch", "button",
                                                 "automation", "device_automation"}
seen, requirements, todo = set(), set(), list(wanted)
while todo:
    domain = todo.pop()
    if domain in seen:
        continue
    seen.add(domain)
    manifest = root / domain / "manifest.json"
    if not manifest.exists():
        continue
    data = json.loads(manifest.read_text())
    requirements.update(data.get("requirements", []))
    todo.extend(data.get("dependencies", []))
    todo.extend(data.get("after_dependencies", []))
print("\n".join(sorted(requirements)))
PY
)"
CONSTRAINTS="$("$VENV/bin/python" -c 'import homeassistant, pathlib; print(pathlib.Path(homeassistant.__file__).parent / "package_constraints.txt")')"
if [[ -n "$REQS" ]]; then
    # shellcheck disable=SC2086
    # josepy 2 removed what the acme release pinned by this HA imports (HA's cloud
    # integration, set up in recovery mode): keep josepy 1.
    timeout 900 "$VENV/bin/pip" install --disable-pip-version-check -q -c "$CONSTRAINTS" \
        $REQS "josepy<2"
fi
touch "$STAMP"
echo "Home Assistant $VERSION ready in $VENV"
