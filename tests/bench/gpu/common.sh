# Sourced by the device scripts: the pack folder (RUNDIR or PACK, default
# .devrun, made by pack.sh), the environment, the card, and
#   gpu_test NAME REGEX [LINES]  a GPU test binary, its lines matching REGEX
#   bc [ARGS]                    bench_cuda at seed-base B=16 (median of 6 steps)
#   torch_seed [ARGS]            torch_ref.py --preset seed --modes best_c
#   profile [FILTER]             one profiled seed-base step (per-op table)
#   tk SECONDS BINARY FILTER     a GPU test binary's tests matching FILTER, verbose
#   olmoe_step B [VAR=VALUE]     bench_cuda at olmoe-1b-7b, seq 4096, micro-batch B (two warm-up
#                                steps: a GEMM called once a step is tuned in the second; since call 92)
#   suites                       both GPU test binaries whole, then resume_gpu.sh
#   bc_as LABEL "VAR=V ..." [ARGS]  bc with those variables, its JSON line prefixed (LABEL)
#   plans [VAR=V ...]            the cuBLASLt plans of a short seed-base run (-G)
#   ktr NAME [VAR=V ...]         ktrace of bench_cuda -n 3 -w 2 into $OUT/NAME.csv.gz, its summary
#   old_build                    an older build's moe-train and bench_cuda ($R/oldb.tgz) unpacked at /tmp/oldb
#   bc_old [ARGS]                bc with that build's bench_cuda
#   same_bytes MODEL.json        moe-train of that build and this one, 4 steps: losses, checkpoint sha256, cmp
#   profile_of LABEL FILTER BENCH_CUDA [VAR=V ...]  one profiled seed-base step of that bench_cuda, its
#                                per-op lines matching FILTER
#   torch_olmoe                  torch_ref.py --preset olmoe --modes best_c (its micro-batch 2)
#   smi_start NAME               nvidia-smi's clock, power and clock-event reasons every 100 ms into
#                                $OUT/NAME.csv, phase marks into $OUT/NAME.phases (since session 23)
#   phase LABEL CMD [ARGS]       CMD (a function too) between LABEL-start and LABEL-end marks
#   smi_stop [MIN_WATTS]         sampling stopped; smi_phases.py's table of the phases (samples at
#                                MIN_WATTS or more: 600 keeps a step's steady part); NAME.csv gzipped
#   ncu_met LABEL BIN REGEX [ARGS]  Nsight Compute's metrics $MET (default: time, instructions, tensor
#                                pipe) of the 6th launch of a kernel matching REGEX in BIN ARGS (since session 24)
#   bk_of VARIANT                a bench_kernels: new (this build), old (oldb.tgz's), else oldb's
#                                bench_kernels_VARIANT (an experiment build packed beside it)
R=$PWD/${RUNDIR:-${PACK:-.devrun}}
B=$R/b
M=share/models/seed-base.json
export MOE_DATADIR=$PWD/share NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH=$R/lib
chmod +x $B/cmd/* $B/tests/*/* 2>/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
date -u
gpu_test() {
	echo "=== $1"
	LD_LIBRARY_PATH=$R/lib:$R/libtest timeout 200 $B/tests/kernels/$1 --verbose 2>&1 | grep -E "$2" |
		tail -"${3:-12}"
}
bc() {
	echo "--- bench_cuda $*"
	timeout 120 $B/tests/bench/bench_cuda -m $M -B 16 -n 6 -w 2 "$@" 2>/tmp/bc.err
	tail -1 /tmp/bc.err
}
torch_seed() {
	echo "=== torch_ref best_c $*"
	timeout 240 python3 $R/torch_ref.py --preset seed --modes best_c "$@" 2>&1 | grep -v Warning | tail -2
}
profile() {
	echo "=== profile B=16"
	timeout 100 $B/tests/bench/bench_cuda -m $M -B 16 -n 1 -w 2 -p 2>/dev/null | tail -n +2 | grep -E "${1:-.}"
}
profile_of() {
	l=$1 f=$2 bin=$3
	shift 3
	echo "--- profile $l"
	env X= "$@" timeout 100 $bin -m $M -B 16 -n 1 -w 2 -p 2>/dev/null | grep -E "$f"
}
torch_olmoe() {
	echo "=== torch_ref --preset olmoe --modes best_c"
	timeout 300 python3 $R/torch_ref.py --preset olmoe --modes best_c 2>&1 | grep -v Warning | tail -2
}
tk() { LD_LIBRARY_PATH=$R/lib:$R/libtest timeout "$1" $B/tests/kernels/$2 --verbose --filter "$3" 2>&1; }
olmoe_step() {
	echo "=== olmoe-1b-7b B=$1 T=4096 ${2:-}"
	env ${2:-X=} timeout 150 $B/tests/bench/bench_cuda -m share/models/olmoe-1b-7b.json -T 4096 -B $1 -n 3 -w 2 \
		2>/tmp/o.err | tail -1
	tail -1 /tmp/o.err
}
bc_as() {
	l=$1 v=$2
	shift 2
	env $v timeout 120 $B/tests/bench/bench_cuda -m $M -B 16 -n 6 -w 2 "$@" 2>/tmp/bc.err | sed "s/^/($l) /"
	tail -1 /tmp/bc.err
}
plans() {
	env "$@" timeout 120 $B/tests/bench/bench_cuda -m $M -B 16 -n 2 -w 1 -G 2>/dev/null | grep -E "^gemm|plans"
}
ktr() {
	k=${OUT:-/tmp}/$1.csv
	shift
	env "$@" CUDA_INJECTION64_PATH=$R/ktrace.so KTRACE_OUT=$k timeout 120 \
		$B/tests/bench/bench_cuda -m $M -B 16 -n 3 -w 2 2>&1 | tail -1
	python3 $R/ktrace.py $k 2>/dev/null | head -9
	gzip -f $k
}
suites() {
	echo "=== test_kernels (all, timeout 250)"
	tk 250 test_kernels '*' | grep -E "\[FAIL|Assert|Synthesis" | tail -20
	echo "=== test_backend (all, timeout 90)"
	tk 90 test_backend '*' | grep -E "cosine over|four steps|\[FAIL|Assert|Synthesis" | tail -20
	echo "=== resume_gpu.sh"
	MOE_BIN=$B/cmd MOE_BUILDDIR=$B MOE_SRCDIR=$PWD timeout 200 sh tests/train/resume_gpu.sh >/tmp/resume.out 2>&1
	echo "rc=$?"
	tail -3 /tmp/resume.out
}
bc_old() { # bench_cuda of the older build (its JSON line prefixed "(old)")
	old_build
	echo "--- old bench_cuda $*"
	timeout 120 /tmp/oldb/bench_cuda -m $M -B 16 -n 6 -w 2 "$@" 2>/tmp/bc.err | sed 's/^/(old) /'
	tail -1 /tmp/bc.err
}
old_build() {
	[ -x /tmp/oldb/moe-train ] || { tar xzf $R/oldb.tgz -C /tmp && chmod +x /tmp/oldb/*; }
}
same_bytes() { # both builds' step-4 checkpoints of MODEL.json (micro-batch 4, seq 2048), byte for byte
	old_build
	echo "=== same bytes: $(basename $1 .json), 4 steps, micro-batch 4, seq 2048"
	[ -d /tmp/sb-data ] || $B/tests/train/mkdata /tmp/sb-data 4000 >/dev/null
	for v in old new; do
		bin=$B/cmd/moe-train
		[ $v = old ] && bin=/tmp/oldb/moe-train
		rm -rf /tmp/run-$v
		timeout 200 $bin --model $1 --data /tmp/sb-data --device cuda --micro-batch 4 --seq-len 2048 \
			--steps 4 --warmup 1 --ckpt-every 4 --eval-every 4 -q --out /tmp/run-$v >/tmp/sb.out 2>&1
		echo "$v rc=$?"
		tail -3 /tmp/sb.out
		sed -n 's/^{"step":\([0-9]*\),"split":"\([a-z]*\)".*"loss":\([^,]*\),.*/\1 \2 \3/p' \
			/tmp/run-$v/metrics.jsonl | tr '\n' ' '
		echo
		(cd /tmp/run-$v/ckpt/step-0000004 && sha256sum *.safetensors)
	done
	for f in model optimizer; do
		cmp /tmp/run-old/ckpt/step-0000004/$f.safetensors /tmp/run-new/ckpt/step-0000004/$f.safetensors &&
			echo "same bytes: $f.safetensors"
	done
}
smi_start() {
	SMI=${OUT:-/tmp}/$1
	: >$SMI.phases
	_f=clocks_event_reasons.active
	nvidia-smi --query-gpu=$_f --format=csv,noheader >/dev/null 2>&1 || _f=clocks_throttle_reasons.active
	nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,$_f \
		--format=csv,noheader,nounits -lms 100 >$SMI.csv 2>/dev/null &
	SMI_PID=$!
	sleep 1
}
phase() {
	_ph=$1
	shift
	echo "$_ph-start $(date +%s.%N)" >>$SMI.phases
	"$@"
	echo "$_ph-end $(date +%s.%N)" >>$SMI.phases
}
smi_stop() {
	kill $SMI_PID 2>/dev/null
	wait $SMI_PID 2>/dev/null
	python3 $R/smi_phases.py $SMI.csv $SMI.phases --min-watts ${1:-0}
	gzip -f $SMI.csv
}
NCU=/usr/local/cuda/bin/ncu
[ -x $NCU ] || NCU=ncu
ncu_met() {
	l=$1 bin=$2 re=$3
	shift 3
	echo "--- ncu $l"
	timeout 100 $NCU --clock-control none --kernel-name-base mangled -k "regex:$re" --launch-skip 5 --launch-count 1 \
		--metrics ${MET:-gpu__time_duration.sum,smsp__inst_executed.sum,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active} \
		$bin "$@" 2>&1 | grep -E "^ +(gpu__|sm__|smsp__)"
}
bk_of() {
	case $1 in
	new) echo $B/tests/bench/bench_kernels ;;
	old) old_build && echo /tmp/oldb/bench_kernels ;;
	*) old_build && echo /tmp/oldb/bench_kernels_$1 ;;
	esac
}
