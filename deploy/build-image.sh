#!/usr/bin/env bash
# Builds the edge-agent image with podman, on a fresh Debian machine too (CI, an air-gapped build
# host that reaches only Debian's and PyPI's package mirrors):
#   - installs podman and runc with apt-get when they are missing (as root);
#   - uses the Dockerfile's pinned base (ARG BASE) when it is in local storage or can be pulled;
#     otherwise makes a local Python base from Debian's packages with mmdebstrap (bookworm's
#     python3, 3.11 like the pinned base) and builds on that; it is kept and reused;
#   - gives the build the host's CA bundle and pip index settings, so pip in the build reaches the
#     package index the way pip on the host does;
#   - builds in docker format (OCI images drop HEALTHCHECK) and prints the image's size.
#
#   deploy/build-image.sh                      # tags localhost/edge-agent:<version>
#   deploy/build-image.sh --tag registry.example.com/edge-agent:0.1.0
#   deploy/build-image.sh --local-base         # never try the registry
#
# podman reads deploy/image/containers.conf (runc, ulimits that fit CI sandboxes) through
# CONTAINERS_CONF unless that is already set. Run the image with the same setting.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -1)
tag="${EDGE_AGENT_IMAGE:-localhost/edge-agent:$version}"
local_base=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag="$2"; shift 2 ;;
    --local-base) local_base=1; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "build-image: unknown argument $1" >&2; exit 2 ;;
  esac
done

say() { echo "build-image: $*" >&2; }

apt_updated=0
need() {  # need COMMAND PACKAGE...: installs the packages when COMMAND is missing
  local command="$1"; shift
  command -v "$command" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" != 0 ]; then
    say "$command is needed: sudo apt-get install $*"; exit 1
  fi
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
  say "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

need podman podman runc
need runc runc
export CONTAINERS_CONF="${CONTAINERS_CONF:-$root/deploy/image/containers.conf}"

# ---- the base -----------------------------------------------------------------------------------
pinned=$(sed -n 's/^ARG BASE=//p' Dockerfile)
case "$pinned" in  # podman wants a fully qualified name where no registries.conf search list is set
  */*/*|*.*/*) qualified="$pinned" ;;
  */*) qualified="docker.io/$pinned" ;;
  *) qualified="docker.io/library/$pinned" ;;
esac

# Bookworm's python3 (3.11), apt for the runtime stage's packages, python3-venv for the build
# stage's `python -m venv`, `python` from python-is-python3; no documentation, manuals or locales.
# The dpkg and apt options stay in the base (as in Debian's official images), so the runtime
# stage's apt-get install adds no documentation and leaves no package caches in its layer.
suite=bookworm
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
mmdebstrap_args=(
  --variant=apt --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --include=python3,python3-venv,python-is-python3,ca-certificates
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --aptopt='Dir::Cache::pkgcache ""' --aptopt='Dir::Cache::srcpkgcache ""'
  --aptopt='Acquire::Languages "none"' --aptopt='APT::Install-Recommends "false"'
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin'
  "$suite"
)
sources=("deb $mirror $suite main" "deb $mirror $suite-updates main"
         "deb $security $suite-security main")
recipe=$(printf '%s\n' "${mmdebstrap_args[@]}" "${sources[@]}" | sha256sum | cut -c1-12)
local_tag="localhost/edge-agent-base:$suite-python3-$recipe"

make_local_base() {
  if podman image exists "$local_tag"; then
    say "reusing the local base $local_tag"; return
  fi
  need mmdebstrap mmdebstrap
  local tar; tar=$(mktemp --suffix=.tar)
  say "making a Python base from Debian's packages ($suite, mmdebstrap)"
  mmdebstrap --quiet "${mmdebstrap_args[@]}" "$tar" "${sources[@]}"
  podman import --quiet --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
    --message "python3 from Debian $suite by deploy/build-image.sh" "$tar" "$local_tag" >/dev/null
  rm -f "$tar"
}

if [ "$local_base" = 0 ] && podman image exists "$qualified"; then
  base="$qualified"
elif [ "$local_base" = 0 ] && timeout 120 podman pull --quiet "$qualified" >/dev/null 2>&1; then
  base="$qualified"
else
  [ "$local_base" = 1 ] || say "cannot pull $qualified: building on a local base instead"
  make_local_base
  base="$local_tag"
fi

# ---- pip as on the host ---------------------------------------------------------------------------
# The network index settings of the host's pip (environment first, then its config files); local
# paths and file:// indexes do not exist inside the build and are left out.
build_args=()
host_pip() {  # host_pip KEY: the value pip on this host uses for KEY, or nothing
  local key="$1" env_name value
  env_name="PIP_$(echo "$key" | tr 'a-z-' 'A-Z_')"
  value="${!env_name:-}"
  if [ -z "$value" ] && command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1; then
    value=$(python3 -m pip config list 2>/dev/null | sed -n "s/^[^.]*\.$key='\(.*\)'$/\1/p" | tail -1)
  fi
  echo "$value"
}
# Each is passed, empty where the host has none (pip reads an empty list as none); the index
# defaults to pip's own.
for key in index-url extra-index-url trusted-host; do
  value=$(host_pip "$key" | tr ' ' '\n' | grep -E '^(https?://|[A-Za-z0-9.-]+(:[0-9]+)?$)' \
          | tr '\n' ' ' | sed 's/ $//' || true)
  [ "$key" != index-url ] || value="${value:-https://pypi.org/simple}"
  build_args+=(--build-arg "PIP_$(echo "$key" | tr 'a-z-' 'A-Z_')=$value")
done
# The host's trusted CAs (pip's own bundle lacks a site's private or proxy CA): mounted over the
# base's bundle for every RUN step and named to pip; nothing of it stays in the image.
ca_bundle=$(host_pip cert)
[ -n "$ca_bundle" ] && [ -f "$ca_bundle" ] || ca_bundle=/etc/ssl/certs/ca-certificates.crt
bundle_in_build=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca_bundle" ] || { say "no CA bundle at $ca_bundle: apt-get install ca-certificates"; exit 1; }
build_args+=(--volume "$ca_bundle:$bundle_in_build:ro" --build-arg "PIP_CERT=$bundle_in_build")

# ---- the build --------------------------------------------------------------------------------------
say "building $tag on $base"
start=$(date +%s)
podman build --format docker --network host --pull=never \
  --build-arg "BASE=$base" "${build_args[@]}" \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.base.name=$base" \
  --tag "$tag" --file Dockerfile .
size=$(podman image inspect --format '{{.Size}}' "$tag")
say "built $tag in $(( $(date +%s) - start )) s on $base; size $(( size / 1000000 )) MB" \
    "(podman image inspect --format '{{.Size}}' $tag)"
