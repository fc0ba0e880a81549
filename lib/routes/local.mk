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
cmd_moe_routes_LDADD = $(ROUTES_LIBS)

MAN_PAGES += man/moe-routes.1 man/moe-routes.5
