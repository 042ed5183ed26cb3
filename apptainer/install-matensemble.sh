#!/bin/sh
# Create MatEnsemble's virtual environment from the image's Python and install MatEnsemble into
# it from the build context (the source tree %files copied to $MATENSEMBLE_SRC), never from a
# branch, so a tagged image holds the tagged code.
#
# Usage: install-matensemble.sh venv PYTHON          create the venv, with what flux-core's
#                                                    bindings and Fluxion need (cffi, pyyaml,
#                                                    ply, jsonschema)
#        install-matensemble.sh package [EXTRAS]     install MatEnsemble (e.g. EXTRAS=mpi) and
#                                                    put flux-core's bindings on the venv's path
#        install-matensemble.sh mpi4py MPICC         build mpi4py against the image's MPICH
#                                                    (an MPICH-ABI libmpi.so.12 the host's Cray
#                                                    MPICH can replace at run time)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
. "$here/versions.sh"
pip="$MATENSEMBLE_VENV/bin/python -m pip --no-cache-dir --disable-pip-version-check"

case "${1:-}" in
venv)
  "${2:?which python}" -m venv "$MATENSEMBLE_VENV"
  $pip install --upgrade pip
  $pip install "cffi>=1.15" "pyyaml>=6.0" "ply>=3.11" "jsonschema>=2.3" setuptools
  ;;
package)
  extras=${2:-}
  target="$MATENSEMBLE_SRC"
  [ -z "$extras" ] || target="$MATENSEMBLE_SRC[$extras]"
  $pip install "$target"
  site=$("$MATENSEMBLE_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
  pyver=$("$MATENSEMBLE_VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  echo "$FLUX_PREFIX/lib/python$pyver/site-packages" > "$site/flux-core.pth"
  "$MATENSEMBLE_VENV/bin/python" -c 'import flux, matensemble; print("flux bindings:", flux.__file__)'
  ;;
mpi4py)
  MPICC="${2:?which mpicc}" $pip install --force-reinstall --no-deps --no-binary=mpi4py "mpi4py>=4.0"
  "$MATENSEMBLE_VENV/bin/python" -c 'from mpi4py import MPI; print(MPI.Get_library_version())'
  ;;
*)
  echo "usage: install-matensemble.sh venv PYTHON | package [EXTRAS] | mpi4py MPICC" >&2
  exit 2
  ;;
esac
