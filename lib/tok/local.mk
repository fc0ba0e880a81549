# lib/tok: byte-level BPE tokenizers (Hugging Face tokenizer.json, tiktoken)
# and the BPE trainer; cmd/moe-tokenize.
noinst_LIBRARIES += lib/tok/libmoetok.a
lib_tok_libmoetok_a_SOURCES = lib/tok/tok.h lib/tok/tok_internal.h lib/tok/pretok.c \
	lib/tok/maps.c lib/tok/norm.c lib/tok/load.c lib/tok/encode.c \
	lib/tok/job.c lib/tok/train.c lib/tok/jsonl.c
lib_tok_libmoetok_a_CFLAGS = $(AM_CFLAGS) -O3 $(UTF8PROC_CFLAGS)

TOK_LIBS = lib/tok/libmoetok.a $(CORE_LIBS) $(UTF8PROC_LIBS) $(PTHREAD_LIBS)

bin_PROGRAMS += cmd/moe-tokenize
cmd_moe_tokenize_SOURCES = cmd/moe-tokenize.c
cmd_moe_tokenize_LDADD = lib/tok/libmoetok.a lib/data/libmoedata.a $(CORE_LIBS) $(ZSTD_LIBS) \
	$(UTF8PROC_LIBS) $(PTHREAD_LIBS)
MAN_PAGES += man/moe-tokenize.1
