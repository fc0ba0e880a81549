# lib/model: the model (config, parameter table, graph, CPU backend, checkpoints)
noinst_LIBRARIES += lib/model/libmoemodel.a
lib_model_libmoemodel_a_SOURCES = lib/model/model.h lib/model/model_int.h lib/model/ops.h \
	lib/model/ops.c lib/model/config.c lib/model/model.c lib/model/backend_cpu.c \
	lib/model/checkpoint.c
lib_model_libmoemodel_a_CFLAGS = $(AM_CFLAGS) -O3

# model presets, installed as $(pkgdatadir)/models/NAME.json
modelsdir = $(pkgdatadir)/models
dist_models_DATA = share/models/tiny.json share/models/seed-base.json share/models/olmoe-1b-7b.json
MAN_PAGES += man/moe-config.5
