#!/bin/sh
# Build and run dependencies of flux-core, flux-sched and MatEnsemble on Rocky Linux 9 (the OLCF
# programming-environment images). Python 3.12 because MatEnsemble needs 3.10+ (the system
# python3 is 3.9); gcc-toolset-13 because Fluxion needs C++23 (the system gcc is 11).
# --allowerasing: the Rocky base images carry curl-minimal, which full curl replaces.
# Usage: install-deps-rocky.sh [EXTRA_PACKAGE...]   (e.g. mpich-devel)
set -eu
dnf install -y dnf-plugins-core epel-release
dnf config-manager --set-enabled crb
dnf install -y --allowerasing \
  ca-certificates curl xz tar gzip which findutils procps-ng \
  gcc-toolset-13 autoconf automake libtool pkgconf make cmake \
  python3.12 python3.12-devel \
  zeromq-devel libuuid-devel jansson-devel lz4-devel libarchive-devel hwloc hwloc-devel \
  sqlite-devel ncurses-devel libsodium-devel lua lua-devel lua-posix \
  boost-devel libedit-devel yaml-cpp-devel libxml2-devel jq "$@"
dnf clean all
