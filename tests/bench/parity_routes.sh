#!/bin/sh
# Routing parity on the GPU host: a random OLMoE-shaped checkpoint traced by
# moe-routes on the CPU and (when built) the CUDA backend, each compared with
# the same model in PyTorch (float64 reference, and transformers'
# OlmoeForCausalLM when installed), then CPU vs CUDA with `moe-routes diff`.
# Prints the tables; exit status 1 if a disagreement is not a near-tie.
#
#   tests/bench/parity_routes.sh BUILDDIR [SRCDIR]
#
# Needs python3 with numpy and torch.  The fp32 CPU trace must match up to
# near-ties (router-logit margin between the K-th and (K+1)-th expert at most
# 1e-4).  The bf16 CUDA trace is judged with --bf16 (parity_routes.py): its
# disagreements and, with the routing forced to the trace's, its logit errors
# must be of the size a bf16-emulating PyTorch model shows against the float64
# one (bf16 near-tie swaps cascade through the layers; see RESULTS-routes.md).
set -u
B=${1:?builddir}
S=${2:-$(cd "$(dirname "$0")/../.." && pwd)}
PY=${PYTHON:-python3}
W=$(mktemp -d "${TMPDIR:-/tmp}/parity-routes.XXXXXX")
trap 'rm -rf "$W"' EXIT INT TERM
rc=0

if [ -x "$B/cmd/moe-fetch" ]; then
	"$B/cmd/moe-fetch" cat "$S/share/demo/sample.parquet" | head -n 24 > "$W/docs.jsonl"
else
	for i in 1 2 3 4 5 6; do
		echo '{"text": "Mixture-of-experts language models route every token to a few experts per layer. Researchers record these routes, count how often each expert is used, and study whether experts specialise in topics, languages or kinds of tokens. Example '"$i"': the quick brown fox jumps over the lazy dog while the router picks experts."}'
	done > "$W/docs.jsonl"
fi
"$B/cmd/moe-tokenize" train --vocab-size 1024 "$W/docs.jsonl" -o "$W/tok.json" || exit 1
$PY "$S/tests/bench/parity_routes.py" make-ckpt "$W/ck" --vocab 1024 || exit 1

echo "== CPU backend (fp32)"
"$B/cmd/moe-routes" -q run "$W/ck" --docs "$W/docs.jsonl" -t "$W/tok.json" -o "$W/cpu" \
	--seq-len 128 --max-tokens 6000 --logits --no-csv || exit 1
$PY "$S/tests/bench/parity_routes.py" "$W/ck" "$W/cpu" --tol 1e-4 --ref torch || rc=1
if $PY -c 'import transformers' 2>/dev/null; then
	$PY "$S/tests/bench/parity_routes.py" "$W/ck" "$W/cpu" --tol 1e-4 --ref hf || rc=1
else
	echo "(transformers not installed: OlmoeForCausalLM comparison skipped)"
fi

echo "== CUDA backend"
if "$B/cmd/moe-routes" -q run "$W/ck" --docs "$W/docs.jsonl" -t "$W/tok.json" -o "$W/cuda" \
	--seq-len 128 --max-tokens 6000 --logits --no-csv --device cuda; then
	$PY "$S/tests/bench/parity_routes.py" "$W/ck" "$W/cuda" --tol 5e-2 --ref torch --bf16 || rc=1
	echo "== moe-routes diff CPU CUDA"
	"$B/cmd/moe-routes" diff "$W/cpu" "$W/cuda" --tol 5e-2
else
	echo "(no CUDA backend)"
fi
exit $rc
