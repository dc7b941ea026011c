#!/usr/bin/env bash
# R4 (c): one-factor ablation of the L2 arm at f = 0.5, seed 0 (docs/reproductions.md).
# From our earlier setting (paper-v1) switch one factor to the public value, and from the public
# setting (paper) switch one back. Every run: eval every 200 steps, public early stop (2 × > 0.99),
# 2000 steps (our L2 grokked at 633 ± 321 steps in paper-v1; CPU time is short).
# Re-running resumes unfinished runs and skips finished ones.
set -u
cd "$(dirname "$0")/../.."
OUT=results/r4/c_ablation
COMMON=(--set arm=l2 --set train.eval_every=200 --set train.monitor_every=200
        --set train.early_stop_above=0.99 --set train.steps=2000 --seed 0 --no-progress)
run() {  # name preset overrides...
  local name=$1 preset=$2; shift 2
  local dir=$OUT/$name sets=()
  for kv in "$@"; do sets+=(--set "$kv"); done
  if [ -f "$dir/summary.json" ] && grep -q '"status": "finished"' "$dir/summary.json"; then return; fi
  if [ -f "$dir/config.json" ]; then
    rankdecay run --resume "$dir" --no-progress
  else
    rankdecay run grokking --preset "$preset" "${COMMON[@]}" "${sets[@]}" --out "$dir"
  fi
}
# the factors most suspected first (the baselines are the (a) run `paper` l2 seed 0 and the
# earlier `paper-v1` l2 seed 0 run, docs/reproductions.md)
run pub+init_gpt2   paper    model.init_std=0.02 model.init_pos=none
run v1+init_torch   paper-v1 model.init_std=none model.init_pos=0.02
run pub+embed_0.02  paper    model.init_embed=0.02
run pub+linear_0.02 paper    model.init_linear=0.02
run pub+betas_0.98  paper    optim.betas=0.9,0.98
run v1+betas_0.999  paper-v1 optim.betas=0.9,0.999
run pub+causal      paper    model.causal=true
run v1+no_mask      paper-v1 model.causal=false
run pub+gelu        paper    model.mlp=gelu
run v1+silu         paper-v1 model.mlp=silu
run pub+eps_old     paper    model.norm_eps=1e-5 model.qk_norm_eps=1e-8
run v1+eps_1e-12    paper-v1 model.norm_eps=1e-12 model.qk_norm_eps=1e-12
run pub+data_old    paper    task.split=ordered task.last_batch=wrap task.out_classes=answers
run v1+data_public  paper-v1 task.split=python task.last_batch=partial task.out_classes=vocab
