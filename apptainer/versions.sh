# Pinned versions of what the images build from source, with the SHA-256 of each release
# tarball. Every recipe's %post sources this file; bump a version and its checksum together.
FLUX_CORE_VERSION=0.86.0
FLUX_CORE_SHA256=0339f1c45af02a2c2ccafddc3d37da4bcf0318c7e6be50dd557ee4cb7b9421f5
FLUX_CORE_URL="https://github.com/flux-framework/flux-core/releases/download/v${FLUX_CORE_VERSION}/flux-core-${FLUX_CORE_VERSION}.tar.gz"

FLUX_SCHED_VERSION=0.48.0
FLUX_SCHED_SHA256=8f8de89e445303e07b27912d4044862a8594d46b68d20dbb28b1e20bef198efe
FLUX_SCHED_URL="https://github.com/flux-framework/flux-sched/releases/download/v${FLUX_SCHED_VERSION}/flux-sched-${FLUX_SCHED_VERSION}.tar.gz"

# Where things go inside every image.
FLUX_PREFIX=/opt/flux
MATENSEMBLE_VENV=/opt/matensemble
MATENSEMBLE_SRC=/opt/matensemble-src
