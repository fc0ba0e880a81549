# lib/routes: routing traces (moe-routes): trace format, statistics, plots, diff, run.
noinst_LIBRARIES += lib/routes/libmoeroutes.a
lib_routes_libmoeroutes_a_SOURCES = \
	lib/routes/routes.h \
	lib/routes/internal.h \
	lib/routes/trace.c \
	lib/routes/save.c \
	lib/routes/stats.c \
	lib/routes/statsio.c
lib_routes_libmoeroutes_a_SOURCES += \
	lib/routes/synth.c \
	lib/routes/diff.c \
	lib/routes/plot.c \
	lib/routes/run.c

ROUTES_LIBS = lib/routes/libmoeroutes.a lib/model/libmoemodel.a lib/tok/libmoetok.a \
	$(DATA_LIBS) $(CORE_LIBS) $(UTF8PROC_LIBS) $(PTHREAD_LIBS)

bin_PROGRAMS += cmd/moe-routes
cmd_moe_routes_SOURCES = cmd/moe-routes.c
# --device cuda: the CUDA backend as moe-eval links it (see lib/train/local.mk)
cmd_moe_routes_LDADD = lib/routes/libmoeroutes.a $(TRAIN_CUDA_LIBS) lib/model/libmoemodel.a \
	lib/tok/libmoetok.a $(DATA_LIBS) $(CORE_LIBS) $(UTF8PROC_LIBS) $(PTHREAD_LIBS)
cmd_moe_routes_LDFLAGS = $(AM_LDFLAGS) $(TRAIN_CUDA_LINK)

MAN_PAGES += man/moe-routes.1 man/moe-routes.5
