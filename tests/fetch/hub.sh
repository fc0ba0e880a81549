#!/bin/sh
# moe-fetch list/get against a local imitation of the Hub (hubserver.py on
# 127.0.0.1, random port): pagination, redirects, Range resumes, retries on
# 503/429/cut connections, sha256 verification, the manifest, unsafe paths,
# HF_TOKEN handling, and downloads killed halfway.
set -u
: "${MOE_BIN:?}" "${MOE_SRCDIR:?}"
command -v python3 >/dev/null 2>&1 || exit 77
F="$MOE_BIN/moe-fetch"
tmp=$(mktemp -d) || exit 99
srv_pid=
cleanup() {
	[ -n "$srv_pid" ] && kill "$srv_pid" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT
fail=0
ok() { echo "ok $*"; }
bad() { echo "not ok $*"; fail=1; }

# ---- the repository: deterministic random files -------------------------
python3 - "$tmp/root" <<'PY' || exit 99
import os, random, sys
root = sys.argv[1]
rnd = random.Random(1234)
files = {
    "sample/10BT/000_00000.parquet": 300000,
    "sample/10BT/001_00000.parquet": 200001,
    "sample/10BT/002_00000.parquet": 99999,
    "sample/10BT/003_00000.parquet": 7,
    "sample/10BT/004_00000.parquet": 0,
    "sample/100BT/000_00000.parquet": 50000,
    "data/CC-MAIN-2024-10/train-00000-of-00001.parquet": 12345,
    "big/slow.bin": 4000000,
}
for p, n in files.items():
    os.makedirs(os.path.dirname(os.path.join(root, p)), exist_ok=True)
    with open(os.path.join(root, p), "wb") as f:
        f.write(bytes(rnd.getrandbits(8) for _ in range(n)) if n < 400000 else os.urandom(n))
with open(os.path.join(root, "README.md"), "w") as f:
    f.write("# a test dataset\n")
PY
echo '{}' > "$tmp/faults.json"
: > "$tmp/log.jsonl"
python3 "$MOE_SRCDIR/tests/fetch/hubserver.py" --root "$tmp/root" --repo test/fineweb-mini \
	--page-size 3 --port-file "$tmp/port" --faults "$tmp/faults.json" --log "$tmp/log.jsonl" &
srv_pid=$!
i=0
while [ ! -f "$tmp/port" ]; do
	i=$((i + 1))
	[ $i -gt 100 ] && { echo "server did not start"; exit 99; }
	sleep 0.1
done
export HF_ENDPOINT="http://127.0.0.1:$(cat "$tmp/port")"
export MOE_FETCH_BACKOFF=0.05
unset HF_TOKEN HUGGING_FACE_HUB_TOKEN
REPO=test/fineweb-mini
faults() { printf '%s\n' "$1" > "$tmp/faults.json"; }
mark() { wc -l < "$tmp/log.jsonl"; }
since() { tail -n +$(($1 + 1)) "$tmp/log.jsonl"; }

# ---- list ---------------------------------------------------------------
if "$F" list "$REPO" --include 'sample/10BT/*' --json > "$tmp/list.json" 2> "$tmp/err"; then
	python3 - "$tmp/root" "$tmp/list.json" <<'PY' && ok "list --json: paths, sizes, sha256 of every page" || bad "list --json"
import hashlib, json, os, sys
root, listing = sys.argv[1], [json.loads(l) for l in open(sys.argv[2])]
want = sorted(p for p in ["sample/10BT/%03d_00000.parquet" % i for i in range(5)])
got = [e["path"] for e in listing]
assert got == want, got
for e in listing:
    data = open(os.path.join(root, e["path"]), "rb").read()
    assert e["size"] == len(data), e
    assert e["sha256"] == hashlib.sha256(data).hexdigest(), e
    assert e["commit"] == "0123456789abcdef0123456789abcdef01234567"
PY
else
	bad "list: $(cat "$tmp/err")"
fi
# 8 listed entries with page size 3 need several pages
n_tree=$(grep -c '/tree/' "$tmp/log.jsonl")
[ "$n_tree" -ge 2 ] && ok "list followed $n_tree pages" || bad "list used $n_tree tree pages"
"$F" list "$REPO" > "$tmp/all.txt" 2>&1 && grep -q "^README.md .* -$" "$tmp/all.txt" &&
	grep -q "^9 files, 4662369 bytes" "$tmp/all.txt" && ok "list of the whole repository (README without LFS)" ||
	bad "list all: $(cat "$tmp/all.txt")"
"$F" list "$REPO" -I 'sample/*' -X '*/100BT/*' -X '*003_*' --json > "$tmp/l2" 2>&1 &&
	[ "$(wc -l < "$tmp/l2")" -eq 4 ] && ok "--exclude" || bad "--exclude: $(cat "$tmp/l2")"
"$F" list "$REPO" -I 'nothing/*' > "$tmp/out" 2> "$tmp/err" && grep -q "warning: no file of $REPO at .* matches" "$tmp/err" &&
	grep -q "^0 files, 0 bytes" "$tmp/out" && ok "an empty selection warns" || bad "empty selection: $(cat "$tmp/err")"
"$F" list "$REPO" -r v9 > "$tmp/out" 2> "$tmp/err"
[ $? -eq 1 ] && grep -q "revision/v9: HTTP 404" "$tmp/err" && ok "unknown revision" ||
	bad "unknown revision: $(cat "$tmp/err")"

# ---- get, then a second run that fetches nothing -------------------------
m=$(mark)
if "$F" get "$REPO" -I 'sample/10BT/*' -o "$tmp/out1" -j 3 -q 2> "$tmp/err"; then
	same=1
	for i in 0 1 2 3 4; do
		p=sample/10BT/00${i}_00000.parquet
		cmp -s "$tmp/root/$p" "$tmp/out1/$p" || same=0
	done
	[ $same -eq 1 ] && ok "get: 5 files identical" || bad "get: files differ"
	ls "$tmp"/out1/sample/10BT/*.part >/dev/null 2>&1 && bad "get left .part files"
	python3 -c "
import json,sys; m=json.load(open(sys.argv[1]))
assert m['commit']=='0123456789abcdef0123456789abcdef01234567' and len(m['files'])==5, m" \
		"$tmp/out1/.moe-fetch.json" && ok "manifest records the commit and 5 files" || bad "manifest"
else
	bad "get: $(cat "$tmp/err")"
fi
since "$m" | grep -q '"status": 302' && ok "resolve redirected to the CDN path" || bad "no redirect seen"
m=$(mark)
"$F" get "$REPO" -I 'sample/10BT/*' -o "$tmp/out1" 2> "$tmp/err" || bad "second get: $(cat "$tmp/err")"
since "$m" | grep -q '/cdn/' && bad "second run downloaded again" || ok "second run fetched nothing"
# a truncated and a missing file are fetched again, the rest not
head -c 1000 "$tmp/root/sample/10BT/000_00000.parquet" > "$tmp/out1/sample/10BT/000_00000.parquet"
rm "$tmp/out1/sample/10BT/002_00000.parquet"
m=$(mark)
"$F" get "$REPO" -I 'sample/10BT/*' -o "$tmp/out1" -q 2> "$tmp/err" || bad "repair get: $(cat "$tmp/err")"
n=$(since "$m" | grep -c '/cdn/')
cmp -s "$tmp/root/sample/10BT/000_00000.parquet" "$tmp/out1/sample/10BT/000_00000.parquet" &&
	cmp -s "$tmp/root/sample/10BT/002_00000.parquet" "$tmp/out1/sample/10BT/002_00000.parquet" &&
	[ "$n" -eq 2 ] && ok "only the wrong and the missing file were fetched again" ||
	bad "repair: $n downloads"
# same size, different bytes: only --verify notices
printf 'X' | dd of="$tmp/out1/sample/10BT/001_00000.parquet" bs=1 seek=1000 conv=notrunc 2>/dev/null
m=$(mark)
"$F" get "$REPO" -I 'sample/10BT/*' -o "$tmp/out1" -q 2> "$tmp/err"
n1=$(since "$m" | grep -c '/cdn/')
"$F" get "$REPO" -I 'sample/10BT/*' -o "$tmp/out1" -q --verify 2> "$tmp/err"
n2=$(since "$m" | grep -c '/cdn/')
cmp -s "$tmp/root/sample/10BT/001_00000.parquet" "$tmp/out1/sample/10BT/001_00000.parquet" &&
	[ "$n1" -eq 0 ] && [ "$n2" -eq 1 ] && ok "--verify re-hashes and repairs a recorded file" ||
	bad "--verify: $n1 $n2 $(cat "$tmp/err")"
"$F" get "$REPO" -I 'sample/*' --max-files 2 -o "$tmp/out2" -q 2> "$tmp/err" &&
	[ "$(find "$tmp/out2" -name '*.parquet' | wc -l)" -eq 2 ] && ok "--max-files" ||
	bad "--max-files: $(cat "$tmp/err")"

# ---- faults -------------------------------------------------------------
P=sample/10BT/000_00000.parquet
faults "{\"$P\": [\"503\", \"503\"]}"
m=$(mark)
"$F" get "$REPO" -I "$P" -o "$tmp/f1" -q 2> "$tmp/err" && cmp -s "$tmp/root/$P" "$tmp/f1/$P" &&
	[ "$(since "$m" | grep -c '/cdn/')" -eq 3 ] && ok "503 twice, then success" ||
	bad "503: $(cat "$tmp/err")"

faults "{\"$P\": [\"429\"]}"
t0=$(date +%s.%N)
"$F" get "$REPO" -I "$P" -o "$tmp/f2" -q 2> "$tmp/err" && cmp -s "$tmp/root/$P" "$tmp/f2/$P" ||
	bad "429: $(cat "$tmp/err")"
t1=$(date +%s.%N)
python3 -c "import sys; sys.exit(0 if float(sys.argv[2]) - float(sys.argv[1]) >= 0.95 else 1)" "$t0" "$t1" &&
	ok "429 with Retry-After: 1 waited a second" || bad "429 did not wait for Retry-After"

faults "{\"$P\": [\"ratelimit\"]}"
t0=$(date +%s.%N)
"$F" get "$REPO" -I "$P" -o "$tmp/f2b" -q 2> "$tmp/err" && cmp -s "$tmp/root/$P" "$tmp/f2b/$P" ||
	bad "ratelimit: $(cat "$tmp/err")"
t1=$(date +%s.%N)
python3 -c "import sys; sys.exit(0 if float(sys.argv[2]) - float(sys.argv[1]) >= 0.95 else 1)" "$t0" "$t1" &&
	ok "429 with RateLimit t=1 waited a second" || bad "429 did not wait for RateLimit t="

faults "{\"$P\": [\"cut\", \"cut\"]}"
m=$(mark)
"$F" get "$REPO" -I "$P" -o "$tmp/f3" -q 2> "$tmp/err" && cmp -s "$tmp/root/$P" "$tmp/f3/$P" ||
	bad "cut: $(cat "$tmp/err")"
since "$m" | grep '/cdn/' | grep -q '"range": "bytes=150000-"' && ok "connection cut mid-body: resumed with Range" ||
	bad "cut: no Range resume: $(since "$m" | grep cdn)"

# the stall timeout is 1 s here (60 s by default): finishing well under 60 s
# shows it applied; the bound is loose because CI runs tests side by side on
# two busy cores
faults "{\"$P\": [\"stall\"]}"
m=$(mark)
t0=$(date +%s)
MOE_FETCH_STALL_TIMEOUT=1 "$F" get "$REPO" -I "$P" -o "$tmp/f3s" -q 2> "$tmp/err" &&
	cmp -s "$tmp/root/$P" "$tmp/f3s/$P" && [ $(($(date +%s) - t0)) -lt 20 ] &&
	since "$m" | grep '/cdn/' | grep -q '"range": "bytes=100000-"' &&
	ok "a stalled transfer times out and resumes" ||
	bad "stall ($(($(date +%s) - t0)) s): $(cat "$tmp/err") $(since "$m" | grep cdn)"

faults "{\"$P\": [\"cut\", \"norange\"]}"
m=$(mark)
"$F" get "$REPO" -I "$P" -o "$tmp/f3b" -q 2> "$tmp/err" && cmp -s "$tmp/root/$P" "$tmp/f3b/$P" &&
	since "$m" | grep '/cdn/' | grep '"range": "bytes=150000-"' | grep -q '"status": 200' &&
	ok "a server that ignores Range (200): the partial file restarts from zero" ||
	bad "norange: $(cat "$tmp/err") $(since "$m" | grep cdn)"

faults "{\"$P\": [\"corrupt\"]}"
"$F" get "$REPO" -I "$P" -o "$tmp/f4" 2> "$tmp/err"
rc=$?
[ $rc -eq 1 ] && grep -q "sha256 mismatch" "$tmp/err" && [ ! -e "$tmp/f4/$P" ] && [ ! -e "$tmp/f4/$P.part" ] &&
	ok "wrong checksum: error, nothing renamed into place" || bad "corrupt: rc=$rc $(cat "$tmp/err")"

faults "{\"@lie\": {\"$P\": \"$(printf '%064d' 7)\"}}"
"$F" get "$REPO" -I "$P" -o "$tmp/f5" 2> "$tmp/err"
[ $? -eq 1 ] && [ ! -e "$tmp/f5/$P" ] && ok "listing with a wrong sha256: refused" || bad "lie: $(cat "$tmp/err")"

"$F" get "$REPO" -I README.md -o "$tmp/f5r" -q 2> "$tmp/err" && cmp -s "$tmp/root/README.md" "$tmp/f5r/README.md" &&
	ok "a plain git file (no LFS) is checked by its blob id" || bad "README: $(cat "$tmp/err")"
faults '{"@lie": {"README.md": "0123456789012345678901234567890123456789"}}'
"$F" get "$REPO" -I README.md -o "$tmp/f5s" 2> "$tmp/err"
[ $? -eq 1 ] && grep -q "git blob id mismatch" "$tmp/err" && [ ! -e "$tmp/f5s/README.md" ] &&
	ok "a wrong git blob id is refused" || bad "README lie: $(cat "$tmp/err")"

faults '{"@extra": [{"path": "sample/10BT/../../../escape.bin", "size": 3}]}'
"$F" get "$REPO" -I 'sample/*' -o "$tmp/f6/in" 2> "$tmp/err"
[ $? -eq 1 ] && grep -q "refusing unsafe path 'sample/10BT/../../../escape.bin'" "$tmp/err" &&
	[ ! -e "$tmp/escape.bin" ] && [ ! -e "$tmp/f6/in/sample" ] && ok "a ../ path in the listing is refused" ||
	bad "unsafe path: $(cat "$tmp/err")"
faults '{"@extra": [{"path": "/etc/evil", "size": 3}]}'
"$F" list "$REPO" > /dev/null 2> "$tmp/err"
[ $? -eq 1 ] && grep -q "unsafe path '/etc/evil'" "$tmp/err" && ok "an absolute path is refused" ||
	bad "absolute path: $(cat "$tmp/err")"

faults '{"@tree": ["503"]}'
"$F" list "$REPO" -I 'sample/10BT/*' > /dev/null 2> "$tmp/err" && ok "503 on the tree endpoint is retried" ||
	bad "tree 503: $(cat "$tmp/err")"

faults "{\"$P\": [\"503\", \"503\", \"503\", \"503\"]}"
"$F" get "$REPO" -I "$P" -o "$tmp/f7" --retries 2 2> "$tmp/err"
[ $? -eq 1 ] && grep -q "giving up after 3 attempts" "$tmp/err" && [ ! -e "$tmp/f7/$P" ] &&
	ok "--retries bounds the attempts" || bad "retries: $(cat "$tmp/err")"
faults '{}'

# ---- progress: on a terminal only ---------------------------------------
if command -v script >/dev/null 2>&1; then
	script -qec "'$F' get '$REPO' -I 'sample/100BT/*' -o '$tmp/p1'" /dev/null > "$tmp/tty.txt" 2>&1
	grep -q "get 100.0% .* ETA" "$tmp/tty.txt" && ok "progress line (rate, ETA) on a terminal" ||
		bad "no progress on a terminal: $(cat "$tmp/tty.txt")"
	script -qec "'$F' get '$REPO' -I 'sample/100BT/*' -o '$tmp/p2' -q" /dev/null > "$tmp/tty.txt" 2>&1
	[ ! -s "$tmp/tty.txt" ] && ok "-q: no progress" || bad "-q printed: $(cat "$tmp/tty.txt")"
fi
"$F" get "$REPO" -I 'sample/100BT/*' -o "$tmp/p3" > "$tmp/out" 2> "$tmp/err"
[ ! -s "$tmp/out" ] && [ "$(wc -l < "$tmp/err")" -eq 1 ] &&
	grep -q "^moe-fetch: 1 fetched, 0 already present, 0 failed (50000 bytes transferred)$" "$tmp/err" &&
	ok "one summary line when stderr is not a terminal" || bad "off a terminal: $(cat "$tmp/err")"

# ---- token: sent to the server, never printed ----------------------------
m=$(mark)
HF_TOKEN=hf_secret_TOKEN_42 "$F" get "$REPO" -I "$P" -o "$tmp/f8" -v -v > "$tmp/out" 2>&1 ||
	bad "token get: $(cat "$tmp/out")"
grep -q hf_secret_TOKEN_42 "$tmp/out" && bad "the token was printed" || ok "the token is never printed"
since "$m" | grep '/api/' | grep -q '"auth": "Bearer hf_secret_TOKEN_42"' && ok "the token is sent as a bearer token" ||
	bad "no bearer token seen"
printf 'hf_file_TOKEN_7\n' > "$tmp/tokenfile"
m=$(mark)
HF_TOKEN_PATH="$tmp/tokenfile" "$F" list "$REPO" > /dev/null 2>&1 &&
	since "$m" | grep -q '"auth": "Bearer hf_file_TOKEN_7"' && ok "the token is read from HF_TOKEN_PATH" ||
	bad "token file"

# ---- a download killed halfway resumes and ends verified ------------------
S=big/slow.bin
for sig in KILL INT; do
	d="$tmp/kill$sig"
	faults "{\"$S\": [\"slow\"]}"
	"$F" get "$REPO" -I "$S" -o "$d" -q 2> "$tmp/err" &
	pid=$!
	i=0
	while :; do
		sz=$(stat -c %s "$d/$S.part" 2>/dev/null || echo 0)
		[ "$sz" -gt 500000 ] && break
		i=$((i + 1))
		[ $i -gt 200 ] && break
		sleep 0.05
	done
	kill -$sig $pid
	wait $pid 2>/dev/null
	rc=$?
	sz=$(stat -c %s "$d/$S.part" 2>/dev/null || echo 0)
	if [ -e "$d/$S" ] || [ "$sz" -le 0 ] || [ "$sz" -ge 4000000 ] || [ $rc -eq 0 ]; then
		bad "SIG$sig: rc=$rc part=$sz final=$(ls "$d/big" 2>&1)"
		continue
	fi
	ok "SIG$sig halfway: no final file, $sz bytes kept in $S.part"
	faults '{}'
	m=$(mark)
	"$F" get "$REPO" -I "$S" -o "$d" -q 2> "$tmp/err" && cmp -s "$tmp/root/$S" "$d/$S" && [ ! -e "$d/$S.part" ] &&
		ok "SIG$sig: the second run resumed and verified" || bad "resume after SIG$sig: $(cat "$tmp/err")"
	since "$m" | grep '/cdn/' | grep -q '"range": "bytes=[1-9][0-9]*-"' && ok "SIG$sig: resumed with a Range request" ||
		bad "SIG$sig: no Range request: $(since "$m")"
done

# ---- the examples of moe-fetch(1), against a second server that holds the
# demo corpus as HuggingFaceFW/fineweb-edu's sample/10BT
if [ -n "${MOE_DATADIR:-}" ] && [ -f "$MOE_DATADIR/demo/sample.parquet" ]; then
	mkdir -p "$tmp/root2/sample/10BT" "$tmp/root2/sample/100BT"
	cp "$MOE_DATADIR/demo/sample.parquet" "$tmp/root2/sample/10BT/000_00000.parquet"
	head -c 1000 "$MOE_DATADIR/demo/sample.parquet" > "$tmp/root2/sample/100BT/000_00000.parquet"
	echo '{}' > "$tmp/faults2.json"
	python3 "$MOE_SRCDIR/tests/fetch/hubserver.py" --root "$tmp/root2" --repo HuggingFaceFW/fineweb-edu \
		--commit 87f09149ef4734204d70ed1d046ddc9ca3f2b8f9 --absolute-redirect \
		--page-size 1 --link-host https://huggingface.co \
		--port-file "$tmp/port2" --faults "$tmp/faults2.json" --log "$tmp/log2.jsonl" &
	srv2=$!
	i=0
	while [ ! -f "$tmp/port2" ] && [ $i -lt 100 ]; do i=$((i + 1)); sleep 0.1; done
	(
		export HF_ENDPOINT="http://127.0.0.1:$(cat "$tmp/port2")"
		cd "$tmp" || exit 1
		set -e
		"$F" list > list.txt
		grep -q "^sample/10BT/000_00000.parquet " list.txt
		grep -q "^1 files, " list.txt
		"$F" list HuggingFaceFW/fineweb-edu > all.txt
		grep -q "^2 files, " all.txt
		"$F" get -o raw/ -j 8 -q
		"$F" get -o raw/ -j 8 -q
		"$F" get HuggingFaceFW/fineweb-edu -r 87f09149ef4734204d70ed1d046ddc9ca3f2b8f9 \
			-I 'sample/100BT/000_00000.parquet' -o raw/ -q
		cmp raw/sample/100BT/000_00000.parquet root2/sample/100BT/000_00000.parquet
		"$F" cat --min-score 3 raw/sample/10BT/*.parquet > docs.jsonl
		"$F" cat --min-score 3 root2/sample/10BT/000_00000.parquet | cmp - docs.jsonl
		[ -s docs.jsonl ]
	) 2> "$tmp/err" && ok "the examples of moe-fetch(1) (list, get twice, get at a commit, cat)" ||
		bad "man examples: $(cat "$tmp/err")"
	kill "$srv2" 2>/dev/null
fi

# a partial file with wrong bytes: detected, downloaded again, verified
d="$tmp/badpart"
mkdir -p "$d/sample/10BT"
head -c 100000 /dev/zero > "$d/$P.part"
"$F" get "$REPO" -I "$P" -o "$d" -q 2> "$tmp/err" && cmp -s "$tmp/root/$P" "$d/$P" &&
	ok "a corrupt partial file is detected and replaced" || bad "corrupt part: $(cat "$tmp/err")"
exit $fail
