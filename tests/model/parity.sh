#!/bin/sh
# Parity of lib/model with an independent PyTorch implementation of the same
# equations (and transformers' OlmoeForCausalLM when it is installed): runs
# tests/bench/parity_hf.py on the cases dump_ref writes.  Skips (77) without torch.
set -u
: "${MOE_BUILDDIR:?}" "${MOE_SRCDIR:?}"
py=
for p in python3 /usr/bin/python3; do
	if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import torch' >/dev/null 2>&1; then
		py=$p
		break
	fi
done
[ -n "$py" ] || { echo "torch not available: skip"; exit 77; }
out=$(mktemp -d "${TMPDIR:-/tmp}/moe-parity.XXXXXX") || exit 1
trap 'rm -rf "$out"' EXIT
"$py" "$MOE_SRCDIR/tests/bench/parity_hf.py" --build "$MOE_BUILDDIR" --src "$MOE_SRCDIR" --out "$out"
