# Sourced by the tests of tests/bench/gpu's Python tools (ktrace.sh,
# smi_phases.sh, fa3f_sched.sh, sass_mix.sh) with TOOL set first (the
# script's file name): exit 77 without python3; S (the source tree), P (the
# tool), a temporary folder T removed at exit, fail (0), and
#   check OUTPUT TEXT           fail, showing OUTPUT, unless TEXT is in it
#   check_squeezed OUTPUT TEXT  the same with OUTPUT's runs of spaces as one
set -u
command -v python3 >/dev/null 2>&1 || exit 77
S=${MOE_SRCDIR:-.}
P="$S/tests/bench/gpu/${TOOL:?}"
T=$(mktemp -d) || exit 99
trap 'rm -rf "$T"' EXIT
fail=0
check() {
	case $1 in *"$2"*) ;; *) echo "expected '$2' in:"; printf '%s\n' "$1"; fail=1 ;; esac
}
check_squeezed() { check "$(printf '%s\n' "$1" | tr -s ' ')" "$2"; }
