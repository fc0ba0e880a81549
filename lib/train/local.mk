# lib/train: the training loop (AdamW, schedules, checkpoints, metrics) and
# the tools moe-train and moe-eval.
noinst_LIBRARIES += lib/train/libmoetrain.a
lib_train_libmoetrain_a_SOURCES = lib/train/train.h lib/train/opts.c lib/train/schedule.c \
	lib/train/ckptdir.c lib/train/optim.c lib/train/trainer.c lib/train/generate.c
lib_train_libmoetrain_a_CPPFLAGS = $(AM_CPPFLAGS) $(CUDA_CPPFLAGS)

# The CUDA backend is found through a weak symbol (lib/model/backend_cpu.c),
# which does not pull archive members: link the whole kernels archive.
if HAVE_CUDA
TRAIN_CUDA_LIBS = kernels/libmoekernels.a $(CUDA_LIBS) -lstdc++
TRAIN_CUDA_LINK = -Wl,--whole-archive kernels/libmoekernels.a -Wl,--no-whole-archive \
	$(CUDA_LDFLAGS)
else
TRAIN_CUDA_LIBS =
TRAIN_CUDA_LINK =
endif
TRAIN_LIBS = lib/train/libmoetrain.a $(TRAIN_CUDA_LIBS) lib/model/libmoemodel.a $(DATA_LIBS) \
	$(CORE_LIBS)

bin_PROGRAMS += cmd/moe-train cmd/moe-eval
cmd_moe_train_SOURCES = cmd/moe-train.c
cmd_moe_train_LDADD = $(TRAIN_LIBS)
cmd_moe_train_LDFLAGS = $(AM_LDFLAGS) $(TRAIN_CUDA_LINK)
cmd_moe_eval_SOURCES = cmd/moe-eval.c
cmd_moe_eval_LDADD = lib/train/libmoetrain.a $(TRAIN_CUDA_LIBS) lib/model/libmoemodel.a \
	lib/tok/libmoetok.a $(DATA_LIBS) $(CORE_LIBS) $(UTF8PROC_LIBS)
cmd_moe_eval_LDFLAGS = $(AM_LDFLAGS) $(TRAIN_CUDA_LINK)

MAN_PAGES += man/moe-train.1 man/moe-eval.1 man/moe-checkpoint.5

dist_recipes_DATA = share/recipes/train.mk
