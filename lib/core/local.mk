# lib/core: errors, diagnostics, progress, atomic files, parsing, checksums,
# JSON helpers, the binary header, safetensors.
noinst_LIBRARIES += lib/core/libmoecore.a
lib_core_libmoecore_a_SOURCES = \
	lib/core/core.h \
	lib/core/error.c \
	lib/core/diag.c \
	lib/core/progress.c \
	lib/core/atomic.c \
	lib/core/parse.c \
	lib/core/sha256.c \
	lib/core/hash.c \
	lib/core/json.c \
	lib/core/header.c \
	lib/core/safetensors.c
# What every tool that links lib/core needs.
CORE_LIBS = lib/core/libmoecore.a $(JANSSON_LIBS) $(LIBM)
