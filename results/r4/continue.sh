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
  *) echo "usage: $0 a|b|c|d" >&2; exit 2 ;;
esac
