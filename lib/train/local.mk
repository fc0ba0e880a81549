# lib/train: the training loop (AdamW, schedules, checkpoints, metrics) and
# the tools moe-train and moe-eval.
noinst_LIBRARIES += lib/train/libmoetrain.a
lib_train_libmoetrain_a_SOURCES = lib/train/train.h lib/train/opts.c lib/train/schedule.c \
	lib/train/ckptdir.c
