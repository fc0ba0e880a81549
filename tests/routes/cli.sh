#!/bin/sh
# moe-routes on a synthetic trace with hostile token strings: the views are
# checked against the dense arrays with python3's csv/json modules (and
# pandas / R readr when installed), then stats, plot, diff and the CLI contract.
set -u
BIN=${MOE_BIN:-$(pwd)/cmd}/moe-routes
[ -x "$BIN" ] || { echo "no $BIN"; exit 77; }
command -v python3 >/dev/null 2>&1 || { echo "python3 missing"; exit 77; }
T=$(mktemp -d "${TMPDIR:-/tmp}/moe-routes-cli.XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT INT TERM
fail() { echo "FAIL: $*"; exit 1; }

"$BIN" synth -o "$T/a" --tokens 3000 --layers 4 --experts 8 --top-k 2 --vocab 40 \
	--doc-len 30 --seed 3 --jsonl --logits || fail "synth"
"$BIN" check "$T/a" || fail "check"

python3 - "$T/a" <<'EOF' || fail "views do not match the arrays"
import csv, json, struct, sys, array, os
d = sys.argv[1]
meta = json.load(open(os.path.join(d, "meta.json")))
with open(os.path.join(d, "routes.safetensors"), "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    hdr = json.loads(f.read(n))
    base = 8 + n
    def arr(name, code):
        info = hdr[name]
        b, e = info["data_offsets"]
        f.seek(base + b)
        a = array.array(code)
        a.frombytes(f.read(e - b))
        return info["shape"], a
    _, tok = arr("token_id", "i")
    _, doc = arr("doc_index", "i")
    _, pos = arr("position", "i")
    shp, ex = arr("topk_experts", "B")
    _, w = arr("topk_weights", "f")
T, L, K = shp
assert hdr["topk_experts"]["dtype"] == "U8"
assert meta["counts"]["n_tokens"] == T and hdr["__metadata__"]["format"] == "moe-routes"
vocab = json.load(open(os.path.join(d, "vocab.json")))
# samples.csv: one row per tensor row, same ids, token strings intact
rows = list(csv.DictReader(open(os.path.join(d, "samples.csv"), newline="", encoding="utf-8")))
assert len(rows) == T, (len(rows), T)
hostile = 0
for t, r in enumerate(rows):
    assert int(r["sample_ix"]) == t
    assert int(r["token_id"]) == tok[t] and int(r["sequence_ix"]) == doc[t] and int(r["token_ix"]) == pos[t]
    assert r["token"] == vocab[str(tok[t])], (t, r["token"], vocab[str(tok[t])])
    hostile += any(c in r["token"] for c in ',"\n\r') or r["token"][:1] == " "
assert hostile > 100, hostile
# positions restart at 0 in every document and increase by one
for t in range(T):
    if t == 0 or doc[t] != doc[t - 1]:
        assert pos[t] == 0
    else:
        assert pos[t] == pos[t - 1] + 1
# topks.csv: T*L*K rows in (token, layer, rank) order, ids/weights as in the arrays
n = 0
for i, r in enumerate(csv.DictReader(open(os.path.join(d, "topks.csv"), newline=""))):
    t, rem = divmod(i, L * K)
    l, k = divmod(rem, K)
    assert (int(r["sample_ix"]), int(r["layer_ix"]), int(r["topk_ix"])) == (t, l, k + 1)
    assert int(r["expert"]) == ex[i]
    assert abs(float(r["weight"]) - w[i]) <= 1e-5 * max(1, w[i])
    n += 1
assert n == T * L * K
# routes_wide.csv: top-1 per layer
for t, r in enumerate(csv.DictReader(open(os.path.join(d, "routes_wide.csv"), newline=""))):
    assert [int(r["l%d" % l]) for l in range(L)] == [ex[(t * L + l) * K] for l in range(L)]
# tokens.jsonl
for t, line in enumerate(open(os.path.join(d, "tokens.jsonl"), encoding="utf-8")):
    o = json.loads(line)
    assert o["token"] == vocab[str(tok[t])] and o["sample_ix"] == t
    assert o["experts"] == [[ex[(t * L + l) * K + k] for k in range(K)] for l in range(L)]
EOF

# pandas and readr round trips of the token column (optional)
if python3 -c 'import pandas' >/dev/null 2>&1; then
	python3 - "$T/a" <<'EOF' || fail "pandas round trip"
import json, sys, pandas as pd
d = sys.argv[1]
v = json.load(open(d + "/vocab.json"))
s = pd.read_csv(d + "/samples.csv", keep_default_na=False, dtype={"token": str})
assert all(s["token"] == [v[str(i)] for i in s["token_id"]])
EOF
else
	echo "pandas not installed: skipping its round trip"
fi
if command -v Rscript >/dev/null 2>&1 && Rscript -e 'library(readr); library(jsonlite)' >/dev/null 2>&1; then
	cat > "$T/rt.R" <<'EOF'
suppressMessages({ library(readr); library(jsonlite) })
d <- commandArgs(trailingOnly = TRUE)[1]
# na = character() keeps the tokens "" and "NA"; the empty target_logprob at
# each document's end then parses to NA with a warning
s <- suppressWarnings(read_csv(file.path(d, "samples.csv"), col_types = cols(token = "c", .default = "d"),
              trim_ws = FALSE, na = character(), progress = FALSE))
v <- fromJSON(file.path(d, "vocab.json"))
want <- unlist(v[as.character(s$token_id)], use.names = FALSE)
stopifnot(nrow(s) == 3000, identical(s$token, want),
          abs(sum(is.na(s$target_logprob)) - length(unique(s$sequence_ix))) <= 1)
cat("readr round trip ok\n")
EOF
	Rscript "$T/rt.R" "$T/a" || fail "readr round trip"
else
	echo "R readr not installed: skipping its round trip"
fi

# stats: tables exist and add up
"$BIN" -q stats "$T/a" --window 2 --min-count 2 || fail "stats"
for f in usage layers ec_steps transitions coactivation path_windows paths expert_tokens token_spec; do
	[ -s "$T/a/stats/$f.csv" ] || fail "stats/$f.csv missing"
done
python3 - "$T/a/stats" <<'EOF' || fail "stats tables inconsistent"
import csv, sys, collections
d = sys.argv[1]
u = list(csv.DictReader(open(d + "/usage.csv")))
assert len(u) == 4 * 8
per = collections.Counter()
perk = collections.Counter()
for r in u:
    per[r["layer_ix"]] += int(r["token_count"])
    perk[r["layer_ix"]] += int(r["topk_count"])
assert set(per.values()) == {3000} and set(perk.values()) == {6000}, (per, perk)
tr = list(csv.DictReader(open(d + "/transitions.csv")))
assert sum(int(r["count"]) for r in tr if r["from_layer"] == "0") == 3000
pw = list(csv.DictReader(open(d + "/path_windows.csv")))
assert len(pw) == 3 and all(float(r["norm_entropy"]) <= 1 for r in pw)
p = list(csv.DictReader(open(d + "/paths.csv")))
assert p[0]["path_str"].startswith("[l0] ") and float(p[0]["share"]) >= float(p[1]["share"])
EOF

# plot: four well-formed SVG files
"$BIN" plot "$T/a" -o "$T/fig" --layer 1 || fail "plot"
python3 - "$T/fig" <<'EOF' || fail "SVG not well-formed"
import sys, xml.etree.ElementTree as ET
for f in ["usage_heatmap", "layers", "flow", "expert_tokens"]:
    ET.parse("%s/%s.svg" % (sys.argv[1], f))
EOF

# diff: a trace against itself agrees everywhere; against another seed it does not
"$BIN" diff "$T/a" "$T/a" > "$T/d.csv" || fail "diff"
python3 - "$T/d.csv" <<'EOF' || fail "self diff"
import csv, sys
for r in csv.DictReader(open(sys.argv[1])):
    assert float(r["top1_agree"]) == 1 and int(r["n_disagree"]) == 0
EOF
"$BIN" synth -o "$T/b" --tokens 3000 --layers 4 --experts 8 --top-k 2 --vocab 40 --doc-len 30 --seed 4 --no-csv
"$BIN" diff "$T/a" "$T/b" >/dev/null 2>&1 && fail "diff of different tokens should fail"

# the last EXAMPLES entry of moe-routes(1), in the temporary directory
"$BIN" synth -o "$T/syn" --tokens 100k --no-csv || fail "man example: synth"
"$BIN" -q stats "$T/syn" || fail "man example: stats"
[ -s "$T/syn/stats/layers.csv" ] || fail "man example: no layers.csv"

# the CLI contract
"$BIN" --help | grep -q '^Usage: ' || fail "--help"
"$BIN" >/dev/null 2>&1; [ $? -eq 2 ] || fail "no command should exit 2"
"$BIN" stats >/dev/null 2>&1; [ $? -eq 2 ] || fail "missing operand should exit 2"
"$BIN" stats --bogus x >/dev/null 2>&1; [ $? -eq 2 ] || fail "unknown option should exit 2"
"$BIN" stats "$T/none" >/dev/null 2>&1; [ $? -eq 1 ] || fail "missing trace should exit 1"
"$BIN" synth -o "$T/a" --tokens 10 >/dev/null 2>&1 && fail "synth over an existing dir without -f"
"$BIN" --version | grep -q 'moe-routes (moe)' || fail "--version"
echo "ok"
exit 0
