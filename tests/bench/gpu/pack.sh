#!/bin/sh
# Collect what the GPU machine needs into .devrun/ (give it to the device
# tool's `carry`): the binaries of a CUDA build, the shared libraries that
# machine lacks (lib/: libjansson, libsnappy, libutf8proc, libgomp; libtest/:
# Criterion and its dependencies, for the test binaries only), real shards
# for the loss curves, torch_ref.py and the snappy Parquet file.
#   sh tests/bench/gpu/pack.sh BUILDDIR SHARDS_DIR [SHARED]
# BUILDDIR: a CUDA build after `make && make check TESTS=` (test binaries
# built); SHARDS_DIR: e.g. the demo's build/demo-out/data; SHARED: ../shared.
# Then, on the device: RUNDIR=.devrun sh .devrun/runN.sh (each prints its
# tables; the scripts are copied into the folder).
# PACK_OUT names another folder than .devrun (ignored .devrun* folders), so
# that several people can pack at once.
set -eu
cd "$(dirname "$0")/../../.."
BLD=${1:?usage: pack.sh BUILDDIR SHARDS_DIR [SHARED]}
SHARDS=${2:?usage: pack.sh BUILDDIR SHARDS_DIR [SHARED]}
SHARED=${3:-../shared}
O=${PACK_OUT:-.devrun}
rm -rf "$O" && mkdir -p "$O"/b/cmd "$O"/b/tests/kernels "$O"/b/tests/bench "$O"/b/tests/train \
	"$O"/lib "$O"/libtest "$O"/pq
for f in "$BLD"/cmd/moe-*; do case $f in *.o) ;; *) cp "$f" "$O"/b/cmd/ ;; esac; done
cp "$BLD"/tests/kernels/test_kernels "$BLD"/tests/kernels/test_backend "$O"/b/tests/kernels/
cp "$BLD"/tests/bench/bench_cuda "$BLD"/tests/bench/bench_kernels "$O"/b/tests/bench/
[ -x "$BLD"/tests/bench/bench_gemm ] && cp "$BLD"/tests/bench/bench_gemm "$O"/b/tests/bench/
[ -x "$BLD"/tests/bench/bench_parquet ] && cp "$BLD"/tests/bench/bench_parquet "$O"/b/tests/bench/
cp "$BLD"/tests/train/mkdata "$O"/b/tests/train/
if [ -x "$BLD"/tests/model/dump_ref ]; then # tests/model/parity.sh on the card
	mkdir -p "$O"/b/tests/model && cp "$BLD"/tests/model/dump_ref "$O"/b/tests/model/
fi
strip "$O"/b/cmd/* "$O"/b/tests/*/* 2>/dev/null || true
# libraries the GPU machine lacks, from this machine (its glibc is newer)
for l in libjansson.so.4 libsnappy.so.1 libutf8proc.so.2 libgomp.so.1; do
	cp -L "$(ldconfig -p | sed -n "s/.*$l .*=> //p" | head -1)" "$O"/lib/
done
for l in $(ldd "$BLD"/tests/kernels/test_kernels | awk '/=>/{print $3}'); do
	case $l in
	*libc.so* | *libm.so* | *libstdc++* | *libgcc_s* | *libpthread* | *libdl.so* | *librt.so* | */cuda/*) ;;
	*libjansson* | *libsnappy* | *libutf8proc* | *libgomp*) ;;
	*) cp -L "$l" "$O"/libtest/ ;;
	esac
done
cp -r "$SHARDS" "$O"/shards
cp "$SHARED"/bench/torch_ref.py "$O"/
cp tests/bench/gpu/*.sh "$O"/ # the device scripts (run as sh "$O"/runN.sh, RUNDIR="$O")
cp tests/bench/gpu/*.py "$O"/ # ktrace.py, smi_phases.py, fa3f_sched.py, sass_mix.py
cp "$SHARED"/data/parquet/fineweb-shaped/sotu-snappy-v1.parquet "$O"/pq/
du -sh "$O"
