#!/usr/bin/env bash
# R4 runs of docs/reproductions.md, each resumable: re-running a command skips finished runs and
# resumes the others from their checkpoints. CPU: 1 thread per process, low priority.
set -u
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
R="nice -n 10 rankdecay"
case "${1:-}" in
  a) $R sweep grokking --preset paper --workers 1 --threads-per-worker 1 --out results/r4/a_paper --no-progress ;;
  b) $R sweep grokking --preset paper --grid arm=lrd --set lrd.polar=svd --workers 1 \
        --threads-per-worker 1 --out results/r4/b_svd --no-progress ;;
  c) nice -n 10 bash results/r4/ablation.sh ;;
  d) $R sweep grokking --preset phase --workers 1 --threads-per-worker 1 --out results/r4/d_phase --no-progress ;;
  d1) # second seed on the cells whose phase class differed from the published one after seed 0
    $R sweep grokking --preset phase --grid task.train_fraction=0.5,0.6,0.7 --grid strength=0.0005,0.001 \
        --grid arm=lrd --seeds 1, --workers 1 --threads-per-worker 1 --out results/r4/d_seed1/lrd --no-progress &
    $R sweep grokking --preset phase --grid task.train_fraction=0.8 --grid strength=0.0001,0.001,0.01 \
        --grid arm=l2 --seeds 1, --workers 1 --threads-per-worker 1 --out results/r4/d_seed1/l2 --no-progress
    wait ;;
  d2) # a third seed (2) on the LRD cells where seeds 0 and 1 both differed from the published ones
    $R sweep grokking --preset phase --grid task.train_fraction=0.6,0.7 --grid strength=0.0005,0.001 \
        --grid arm=lrd --seeds 2, --workers 2 --threads-per-worker 1 --out results/r4/d_seed2/lrd --no-progress ;;
  *) echo "usage: $0 a|b|c|d|d1|d2" >&2; exit 2 ;;
esac
