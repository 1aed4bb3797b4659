# Set-up steps shared by scripts/up, scripts/test and .ci/run; source it, then call the ensure_* you need.
# Every function is idempotent: it does nothing when its step is already done.

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
venv=$repo/.venv

say() { echo "bootstrap: $*" >&2; }

# Prints a real Python >= 3.11 that has venv and ensurepip (Debian's python3 lacks ensurepip until
# python3-venv is installed). A pyenv shim is replaced by the interpreter behind it (sys.executable),
# so nothing created from it pays pyenv's ~100 ms of bash per start.
find_python() {
  local candidate
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.11.*/bin/python3.11 \
      "$(command -v python3.11 || true)" /usr/bin/python3.11 /usr/bin/python3 "$(command -v python3 || true)"; do
    [ -n "$candidate" ] && [ -x "$candidate" ] || continue
    "$candidate" -c 'import sys, venv, ensurepip
if sys.version_info < (3, 11): sys.exit(1)
print(sys.executable)' 2>/dev/null && return 0
  done
  return 1
}

apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    say "missing Debian packages: $*: run as root, or apt-get install them"
    return 1
  fi
  if [ -z "${apt_updated:-}" ]; then
    apt-get update -q >/dev/null
    apt_updated=1
  fi
  say "installing Debian packages: $*"
  # No package may start a daemon on the host (docker.io would start a dockerd that rewrites iptables):
  # policy-rc.d exit 101 tells invoke-rc.d to start nothing. One that exists already is left as it is.
  local policy=/usr/sbin/policy-rc.d made_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# Written by mydocker bootstrap for one apt-get install; removed after it.\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    made_policy=1
  fi
  local status=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null || status=$?
  if [ -n "$made_policy" ]; then
    rm -f "$policy"
  fi
  return "$status"
}

# Installs every package of a list (default scripts/debian-packages.txt) that dpkg does not report installed.
ensure_debian_packages() {
  local list=${1:-$repo/scripts/debian-packages.txt} package missing=()
  while read -r package; do
    package=${package%%#*}
    package=${package//[[:space:]]/}
    [ -n "$package" ] || continue
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
  done < "$list"
  if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
  fi
}

# Creates .venv, installs requirements.txt when it changed since the last successful install,
# and compiles the project's bytecode (PYTHONDONTWRITEBYTECODE=1 would otherwise make every start recompile).
ensure_python_env() {
  local python wanted
  if ! "$venv/bin/python" -c '' 2>/dev/null; then
    python=$(find_python) || { apt_install python3 python3-venv && python=$(find_python); } || {
      say "no Python 3.11+ with venv found"
      return 1
    }
    say "creating $venv with $python"
    "$python" -m venv --clear "$venv"
  fi
  wanted=$(sha256sum "$repo/requirements.txt" | cut -d' ' -f1)
  if [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$wanted" ]; then
    say "installing requirements.txt into $venv"
    "$venv/bin/python" -m pip install -q -r "$repo/requirements.txt"
    echo "$wanted" > "$venv/.requirements.sha256"
  fi
  # Only a speed-up: a file that does not compile is reported by Python when it is imported.
  (cd "$repo" && env -u PYTHONDONTWRITEBYTECODE "$venv/bin/python" -m compileall -qq cli services protos tests) \
    || say "some files did not compile to bytecode (a syntax error?)"
}

# Compiles ./mydocker's compiled front (cli/front.c) into the venv when it is missing or older than its
# source: it hands commands to the warm CLI server without starting Python (~10 ms less per command).
ensure_front() {
  local source=$repo/cli/front.c target=$venv/bin/mydocker-front
  [ "$target" -nt "$source" ] && return 0
  # Built aside and renamed: a concurrent scripts/up or a running ./mydocker never sees half a file.
  local partial=$target.partial.$$
  if ! cc -O2 -Wall -Wextra -Werror -o "$partial" "$source"; then
    rm -f "$partial"
    # Not fatal: ./mydocker works without it, ~10 ms slower per command (the tests of the front fail).
    say "cannot compile $source (apt-get install gcc libc6-dev): ./mydocker uses its Python front meanwhile"
    return 0
  fi
  mv -f "$partial" "$target"
}

# Regenerates protos/ when a generated module is missing or older than its .proto.
ensure_protos() {
  local proto base generated
  while read -r proto; do
    base=${proto%.proto}
    for generated in "${base}_pb2.py" "${base}_pb2.pyi" "${base}_pb2_grpc.py"; do
      if [ ! -f "$generated" ] || [ "$generated" -ot "$proto" ]; then
        say "generating Python code from protos/"
        "$repo/scripts/gen-protos"
        return 0
      fi
    done
  done < <(find "$repo/protos" -name '*.proto')
}

# Installs the pinned npm tools (buf) into tools/node_modules.
ensure_tools() {
  [ -x "$repo/tools/node_modules/.bin/buf" ] && return 0
  command -v npm >/dev/null || apt_install nodejs npm
  say "installing tools/ (npm ci)"
  (cd "$repo/tools" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
}
