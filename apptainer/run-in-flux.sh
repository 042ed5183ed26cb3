#!/bin/sh
# The images' runscript: run the given command inside a Flux instance.
#
# Inside an instance already (FLUX_URI is set, e.g. under `flux alloc` or a `flux start` on the
# host side) the command runs as is; otherwise a single-node instance is started around it with
# `flux start`, and it stops when the command ends. `matensemble run|resume` without a
# --backend option gets --backend flux, so the ensemble's tasks become Flux jobs.
set -eu
[ "$#" -gt 0 ] || set -- matensemble --help

if [ "$1" = matensemble ] && { [ "${2:-}" = run ] || [ "${2:-}" = resume ]; }; then
  case " $* " in
  *" --backend "* | *" --backend="*) ;;
  *)
    cmd=$1 sub=$2
    shift 2
    set -- "$cmd" "$sub" --backend flux "$@"
    ;;
  esac
fi

if [ -n "${FLUX_URI:-}" ]; then
  exec "$@"
fi
exec flux start ${MATENSEMBLE_FLUX_START_OPTIONS:-} "$@"
