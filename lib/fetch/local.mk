# lib/fetch: the Hugging Face Hub client (libcurl), and the moe-fetch tool,
# its man page and the bundled demo corpus.
noinst_LIBRARIES += lib/fetch/libmoefetch.a
lib_fetch_libmoefetch_a_SOURCES = \
	lib/fetch/fetch.h \
	lib/fetch/internal.h \
	lib/fetch/hub.c \
	lib/fetch/download.c \
	lib/fetch/sha1.c
lib_fetch_libmoefetch_a_CPPFLAGS = $(AM_CPPFLAGS) $(CURL_CFLAGS)

bin_PROGRAMS += cmd/moe-fetch
cmd_moe_fetch_SOURCES = cmd/moe-fetch.c
cmd_moe_fetch_LDADD = lib/fetch/libmoefetch.a $(PARQUET_LIBS) $(CORE_LIBS) $(CURL_LIBS) $(PTHREAD_LIBS)

MAN_PAGES += man/moe-fetch.1

demodir = $(pkgdatadir)/demo
dist_demo_DATA = share/demo/sample.parquet share/demo/README
