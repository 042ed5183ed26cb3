#!/bin/sh
# Build and run dependencies of flux-core, flux-sched and MatEnsemble on Debian or Ubuntu.
# Usage: install-deps-debian.sh [EXTRA_PACKAGE...]   (e.g. libmpich-dev for an MPICH-ABI image)
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends \
  ca-certificates curl xz-utils \
  build-essential autoconf automake libtool pkg-config cmake make \
  python3 python3-dev python3-venv \
  libzmq3-dev uuid-dev libjansson-dev liblz4-dev libarchive-dev libhwloc-dev \
  libsqlite3-dev libncurses-dev libsodium-dev lua5.1 liblua5.1-0-dev lua-posix \
  libboost-dev libboost-graph-dev libedit-dev libyaml-cpp-dev libxml2-dev \
  jq procps "$@"
apt-get clean
rm -rf /var/lib/apt/lists/*
