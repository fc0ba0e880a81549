# Example Makefile recipe: shards -> training run -> evaluation, with the
# usual Make dependencies so that `make -f train.mk` only redoes what changed.
#
#   make -f train.mk DATA=data RUN=runs/tiny MODEL=tiny DEVICE=cpu STEPS=300
#   make -f train.mk RUN=runs/tiny resume     # continue after an interruption
#
# Variables: DATA (shard directory), RUN (run directory), MODEL (preset or
# config file), DEVICE (auto, cpu, cuda), STEPS, TRAIN_FLAGS (more options),
# CONFIG (a JSON training config, optional).
DATA ?= data
RUN ?= runs/tiny
MODEL ?= tiny
DEVICE ?= auto
STEPS ?= 300
TRAIN_FLAGS ?= --micro-batch 8 --warmup 30 --lr 3e-3 --eval-every 100
CONFIG ?=
MOE_TRAIN ?= moe-train
MOE_EVAL ?= moe-eval

all: $(RUN)/eval.json

# Training writes ckpt/latest last; the run is complete when it exists.
$(RUN)/ckpt/latest: $(DATA)/index.json
	$(MOE_TRAIN) --model $(MODEL) --data $(DATA) --out $(RUN) --device $(DEVICE) \
		--steps $(STEPS) $(if $(CONFIG),--config $(CONFIG)) $(TRAIN_FLAGS) --resume

$(RUN)/eval.json: $(RUN)/ckpt/latest
	$(MOE_EVAL) $(RUN) --data $(DATA) --split val > $@.tmp && mv $@.tmp $@

# Continue an interrupted run (options come from $(RUN)/train.json).
resume:
	$(MOE_TRAIN) --out $(RUN) --resume

clean:
	rm -rf $(RUN)

.PHONY: all resume clean
