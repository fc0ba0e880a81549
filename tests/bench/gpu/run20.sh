#!/bin/sh
# Session 4, call 4: the lead's changes (optimizer stream, batched q/k/v,
# three read-backs) beside torch_ref best_c, in one call.
set -u
. "$(dirname "$0")/common.sh"
bc
torch_seed
bc
date -u
