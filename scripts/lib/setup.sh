# Shared by scripts/test and scripts/demo: make the machine ready, idempotently and quietly.
# Needs only Python 3.11+; installs Debian packages with apt-get when missing (as root, or via sudo).

VENV="${VILLAGE_VENV:-$PWD/.venv}"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

find_python() {
  for py in python3.13 python3.12 python3.11 python3; do
    # (2>/dev/null: a pyenv shim for a version not selected is found by command -v but fails, loudly)
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$py"; return 0
    fi
  done
  die "Python 3.11 or newer is needed (Debian bookworm and Raspberry Pi OS have it: apt-get install python3)"
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo "$@"
  else return 1
  fi
}

# ensure_debs REQUIRED_CMD:PACKAGE ... : install the packages whose command is missing
# (a REQUIRED_CMD starting with / is a file that package installs; it may hold a glob, e.g. /usr/lib/*/...)
ensure_debs() {
  local missing=() pair cmd pkg
  for pair in "$@"; do
    cmd="${pair%%:*}"; pkg="${pair#*:}"
    if [[ "$cmd" == /* ]]; then compgen -G "$cmd" >/dev/null || missing+=("$pkg")
    else command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("$pkg"); fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    say "missing (install them yourself, this is not a Debian system): ${missing[*]}"; return 1
  fi
  say "installing Debian packages: ${missing[*]}"
  if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null 2>&1; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 || true
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null \
      || { say "could not install ${missing[*]}: run as root or with passwordless sudo, or install them by hand"; return 1; }
  fi
}

# ensure_venv EXTRAS : the project installed (editable) into $VENV with EXTRAS: "" (the box's own packages),
# "[sim]" (./scripts/demo) or "[test]" (./scripts/test: sim, county, the test tools and mypy; serves all)
ensure_venv() {
  local py stamp want
  py="$(find_python)"
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating the virtual environment in $VENV"
    if ! "$py" -m venv "$VENV" 2>/dev/null; then
      ensure_debs "/usr/lib/python3/dist-packages/ensurepip:python3-venv" || true
      rm -rf "$VENV"; "$py" -m venv "$VENV" || die "cannot create a venv (apt-get install python3-venv)"
    fi
  fi
  stamp="$VENV/.village-installed"
  want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)-$1"
  local have; have="$(cat "$stamp" 2>/dev/null || true)"
  # a venv installed with the test extras also serves the demo and the box (no reinstall when switching)
  if [ "$have" != "$want" ] && ! { [ "$1" != "[test]" ] && [ "$have" = "${want%-*}-[test]" ]; }; then
    say "installing village-edge and its packages into the venv"
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    "$VENV/bin/python" -m pip install -q -e ".$1" || die "pip install failed"
    echo "$want" > "$stamp"
  fi
  export PATH="$VENV/bin:$PATH"
}
