#!/bin/sh
# Build flux-core (with Python bindings for $PYTHON) and flux-sched (Fluxion) into $FLUX_PREFIX.
#
# The sources are the pinned release tarballs of versions.sh, verified against their SHA-256.
# When MATENSEMBLE_FLUX_SOURCE names a directory holding flux-core/ and flux-sched/ source
# trees of those same releases (a build machine without access to github.com), they are used
# instead, and the tarballs are not fetched.
#
# Usage: PYTHON=/opt/matensemble/bin/python build-flux.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
. "$here/versions.sh"
: "${PYTHON:?set PYTHON to the interpreter flux-core builds its bindings for}"
jobs=${BUILD_JOBS:-$(nproc)}
work=$(mktemp -d /tmp/flux-build.XXXXXX)

fetch() {  # fetch NAME VERSION URL SHA256 -> prints the unpacked source directory
  name=$1 version=$2 url=$3 sha=$4
  if [ -n "${MATENSEMBLE_FLUX_SOURCE:-}" ]; then
    src="$MATENSEMBLE_FLUX_SOURCE/$name"
    [ -d "$src" ] || { echo "build-flux: MATENSEMBLE_FLUX_SOURCE has no $name/ directory: $src" >&2; exit 1; }
    cp -a "$src" "$work/$name-$version"
  else
    curl -fsSL --retry 3 -o "$work/$name.tar.gz" "$url"
    echo "$sha  $work/$name.tar.gz" | sha256sum -c - >&2
    tar -xzf "$work/$name.tar.gz" -C "$work"
  fi
  echo "$work/$name-$version"
}

core=$(fetch flux-core "$FLUX_CORE_VERSION" "$FLUX_CORE_URL" "$FLUX_CORE_SHA256")
cd "$core"
# A release tarball ships configure; a source tree from git needs autogen, and takes its
# version from FLUX_VERSION instead of `git describe`.
[ -x configure ] || FLUX_VERSION="$FLUX_CORE_VERSION" ./autogen.sh
FLUX_VERSION="$FLUX_CORE_VERSION" ./configure --prefix="$FLUX_PREFIX" PYTHON="$PYTHON" \
  --disable-docs --enable-pylint=no
make -j"$jobs"
make install

sched=$(fetch flux-sched "$FLUX_SCHED_VERSION" "$FLUX_SCHED_URL" "$FLUX_SCHED_SHA256")
mkdir -p "$sched/build"
cd "$sched/build"
PKG_CONFIG_PATH="$FLUX_PREFIX/lib/pkgconfig:${PKG_CONFIG_PATH:-}" cmake .. \
  -DCMAKE_INSTALL_PREFIX="$FLUX_PREFIX" -DCMAKE_BUILD_TYPE=Release \
  -DFLUX_SCHED_VER="$FLUX_SCHED_VERSION" -DPython_EXECUTABLE="$PYTHON" \
  -DENABLE_DOCS=OFF -DBUILD_TESTING=OFF -DCMAKE_INSTALL_RPATH="$FLUX_PREFIX/lib"
make -j"$jobs"
make install

cd /
rm -rf "$work"
"$FLUX_PREFIX/bin/flux" version
