# Sourced by the moe-train shell tests (cli.sh, resume.sh, resume_gpu.sh)
# with NAME set first (the temporary folder's name): the test environment's
# folders BIN, B (build) and S (source), TRAIN (exit 77 when moe-train is
# not built), a temporary folder T removed at exit, fail MESSAGE, and
# losses RUN: the "step split loss" lines of RUN/metrics.jsonl.
set -u
BIN=${MOE_BIN:?}
B=${MOE_BUILDDIR:?}
S=${MOE_SRCDIR:?}
TRAIN=$BIN/moe-train
[ -x "$TRAIN" ] || { echo "moe-train not built"; exit 77; }
T=$(mktemp -d "${TMPDIR:-/tmp}/moe-train-$NAME.XXXXXX")
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
losses() { sed -n 's/^{"step":\([0-9]*\),"split":"\([a-z]*\)".*"loss":\([^,]*\),.*/\1 \2 \3/p' "$1/metrics.jsonl"; }
