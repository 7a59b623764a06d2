#!/usr/bin/env bash
# Install the Debian packages the offline ("local") providers need: the Apertium translator and
# its language pairs. Everything else the local providers use comes from PyPI
# (pip install 'ai-apps[local]').
#
# Idempotent: packages whose Apertium modes are already listed by `apertium -l` are skipped, and
# `apt-get update` runs only when a package is unknown to apt's cache. Uses sudo only when not
# root. On a machine without apt (macOS, Alpine, ...) it warns and exits 0: the rest of the
# project still runs, and the translator reports a clear "apertium is not installed" error.
#
#   scripts/system-packages.sh            # install what is missing
#   scripts/system-packages.sh --check    # only report; exit 1 if something is missing
set -euo pipefail

# package:modes-it-provides (the modes are how we tell it is installed, whatever the path).
PAIRS=(
  "apertium-eng-spa:eng-spa spa-eng"   # en <-> es (5 MB)
  "apertium-fr-es:fr-es es-fr"         # fr <-> es, and en <-> fr through Spanish (7 MB)
  "apertium-eng-cat:eng-cat cat-eng"   # en <-> ca (14 MB)
  "apertium-es-pt:es-pt pt-es"         # es <-> pt, en <-> pt through Spanish (3 MB)
  "apertium-spa-ita:spa-ita ita-spa"   # es <-> it, en <-> it through Spanish (4 MB)
)

log() { printf 'system-packages: %s\n' "$*"; }
warn() { printf 'system-packages: WARNING: %s\n' "$*" >&2; }

check_only=false
case "${1:-}" in
  --check) check_only=true ;;
  "") ;;
  -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
  *) warn "unknown argument: $1"; exit 2 ;;
esac

installed_modes=""
if command -v apertium >/dev/null 2>&1; then
  # `apertium -l` prints one mode per line, indented.
  installed_modes="$(apertium -l 2>/dev/null | tr -d ' \t' || true)"
fi

has_mode() { grep -qx -- "$1" <<<"$installed_modes"; }

missing=()
command -v apertium >/dev/null 2>&1 || missing+=("apertium")
for entry in "${PAIRS[@]}"; do
  package="${entry%%:*}"
  modes="${entry#*:}"
  for mode in $modes; do
    if ! has_mode "$mode"; then
      missing+=("$package")
      break
    fi
  done
done

if [ "${#missing[@]}" -eq 0 ]; then
  log "apertium and its pairs are installed: $(tr '\n' ' ' <<<"$installed_modes")"
  exit 0
fi

log "missing: ${missing[*]}"
if "$check_only"; then
  exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
  warn "apt-get is not available on this machine; install Apertium and the pairs above with"
  warn "your system's package manager. Local translation will report 'apertium is not installed'."
  exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
  else
    warn "not root and sudo is not available; as root run: apt-get install -y ${missing[*]}"
    exit 1
  fi
fi

# apt-get update is slow and needs the network: run it only when apt does not know a package.
needs_update=false
for package in "${missing[@]}"; do
  candidate="$(apt-cache policy "$package" 2>/dev/null | awk '/Candidate:/ {print $2}')"
  if [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; then
    needs_update=true
    break
  fi
done
if "$needs_update"; then
  log "running apt-get update (apt does not know every package yet)"
  "${sudo[@]}" apt-get update
fi

log "installing: ${missing[*]}"
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y --no-install-recommends "${missing[@]}"

log "installed Apertium modes: $(apertium -l | tr -d ' \t' | tr '\n' ' ')"
