# lib/data: the token stream, shard directories and the training data loader.
noinst_LIBRARIES += lib/data/libmoedata.a
lib_data_libmoedata_a_SOURCES = \
	lib/data/tokstream.h \
	lib/data/tokstream.c \
	lib/data/data.h \
	lib/data/shardfmt.h \
	lib/data/shardfmt.c \
	lib/data/shardw.c \
	lib/data/dataset.c \
	lib/data/verify.c \
	lib/data/loader.c
lib_data_libmoedata_a_CPPFLAGS = $(AM_CPPFLAGS) $(ZSTD_CFLAGS)
# Link line for users of data.h (shards, loader): put before $(CORE_LIBS).
# Users of tokstream.h alone may link lib/data/libmoedata.a only.
DATA_LIBS = lib/data/libmoedata.a $(ZSTD_LIBS) $(PTHREAD_LIBS)

bin_PROGRAMS += cmd/moe-shard
cmd_moe_shard_SOURCES = cmd/moe-shard.c
cmd_moe_shard_LDADD = $(DATA_LIBS) $(CORE_LIBS)
MAN_PAGES += man/moe-shard.1 man/moe-tokstream.5 man/moe-shard.5
