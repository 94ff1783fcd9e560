#!/usr/bin/env bash
# Calibration on a balanced and an imbalanced task: zero-shot accuracy and macro-F1,
# uncalibrated (every calibrated report carries it), uniform, prior and dev-chosen, on the
# embedded SmolLM2-135M and on Qwen2.5-Coder-0.5B. Writes one report JSON per run to
# docs/results/quality/reports/ and the table in calibration.md is read from them
# (python docs/results/quality/table.py). One run at a time; about an hour on 2 busy cores.
# Needs: frozenlm models get qwen2.5-coder-0.5b
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=docs/results/quality/reports
mkdir -p "$out"
python docs/results/quality/make_sentiment_87.py  # rewrites the same files
for backbone in default qwen2.5-coder-0.5b; do
  for task in sentiment docs/results/quality/sentiment-87/task.yaml; do
    name=$(basename "$(dirname "$task")")
    [ "$task" = sentiment ] && name=sentiment
    for mode in uniform prior dev; do
      echo "== $(date +%T) $backbone $name $mode"
      python -m frozenlm --no-record eval --task "$task" --limit 200 --calibrate "$mode" \
        --dev-limit 200 --backbone "$backbone" --out "$out/$backbone.$name.$mode.json"
    done
  done
done
