# Sourced by the device scripts: the pack folder (RUNDIR or PACK, default
# .devrun, made by pack.sh), the environment, the card, and
#   gpu_test NAME REGEX [LINES]  a GPU test binary, its lines matching REGEX
#   bc [ARGS]                    bench_cuda at seed-base B=16 (median of 6 steps)
#   torch_seed [ARGS]            torch_ref.py --preset seed --modes best_c
#   profile [FILTER]             one profiled seed-base step (per-op table)
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
