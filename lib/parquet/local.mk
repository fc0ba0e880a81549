# lib/parquet: the native Parquet reader (no libcurl here) and the JSONL
# writer behind `moe-fetch cat`.
noinst_LIBRARIES += lib/parquet/libmoeparquet.a
lib_parquet_libmoeparquet_a_SOURCES = \
	lib/parquet/parquet.h \
	lib/parquet/internal.h \
	lib/parquet/thrift.c \
	lib/parquet/meta.c \
	lib/parquet/read.c \
	lib/parquet/snappy.c \
	lib/parquet/jsonl.c
# What a program linking lib/parquet needs after it (before $(CORE_LIBS)).
PARQUET_LIBS = lib/parquet/libmoeparquet.a $(SNAPPY_LIBS) $(ZSTD_LIBS) $(ZLIB_LIBS)
