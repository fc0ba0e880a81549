# Sourced by the session-3 device scripts (run10.sh on): the pack folder
# (RUNDIR, default .devrun, made by pack.sh), the environment, the card, and
#   gpu_test NAME REGEX [LINES]  a GPU test binary, its lines matching REGEX
#   bc [ARGS]                    bench_cuda at seed-base B=16 (median of 6 steps)
R=$PWD/${RUNDIR:-.devrun}
B=$R/b
M=share/models/seed-base.json
export MOE_DATADIR=$PWD/share NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH=$R/lib
chmod +x $B/cmd/* $B/tests/*/*
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
