#!/usr/bin/env bash
# The scale study: three experiments recorded on the embedded default backbone, then replayed
# with `frozenlm rerun RECORD --backbone NAME` on the others and drawn with `frozenlm scale`.
# Records go to docs/results/scale/records (kept in the repository); outputs to runs/scale.
# Needs: frozenlm models get gemma-3-270m (and qwen2.5-coder-0.5b, qwen2.5-coder-1.5b).
set -euo pipefail
cd "$(dirname "$0")/../../.."
export FROZENLM_RUNS=docs/results/scale/records
mkdir -p "$FROZENLM_RUNS" runs/scale
newest() { ls -t "$FROZENLM_RUNS"/*-"$1"-*.json | head -1 | xargs basename | sed 's/.json$//'; }
run() { echo "== $(date +%T) frozenlm $*"; /usr/bin/time -f "   %e s, %M KB max RSS" frozenlm "$@"; }

# 1. Prompting on every backbone: calibrated zero-shot and 4-shot, sentiment, trec, topic
#    (the quick budget: the first 80 test examples of each).
if [ -z "${prompting:-}" ]; then  # (give prompting=ID to reuse a record)
  run compare --tasks sentiment,trec,topic --methods zero-shot,few-shot --no-domain-shift \
    --out runs/scale/prompting
  prompting=$(newest compare)
fi
# 2. SuperICL on sentiment. Its MiniLM plug-in does not depend on the backbone: it is trained
#    once (11 min on 2 cores; not recorded) and every backbone reads the same folder.
if [ ! -f runs/scale/supericl.plugin/frozenlm-plugin.json ]; then
  run --no-record supericl --task sentiment --limit 100 --no-ablations \
    --out runs/scale/supericl.json
fi
run supericl --task sentiment --plugin runs/scale/supericl.plugin --limit 100 --no-ablations \
  --out runs/scale/supericl-sentiment.json
supericl=$(newest eval)
# 3. Trained plug-ins: the soft prompt and LoRA on sentiment and trec, 128 labelled examples,
#    the quick budget's 20 steps x batch 4.
run compare --tasks sentiment,trec --methods soft-prompt,lora --train-sizes 128 \
  --no-domain-shift --out runs/scale/trained
trained=$(newest compare)
echo "records: prompting=$prompting supericl=$supericl trained=$trained"

for backbone in tiny gemma-3-270m qwen2.5-coder-0.5b; do
  run rerun "$prompting" --backbone "$backbone"
  run rerun "$supericl" --backbone "$backbone"
  run rerun "$trained" --backbone "$backbone"
done
# The 1.5B model: prompting and SuperICL (its trained cells take ~40 min on 2 cores: set
# TRAIN_1_5B=1 to run them too).
run rerun "$prompting" --backbone qwen2.5-coder-1.5b
run rerun "$supericl" --backbone qwen2.5-coder-1.5b
if [ -n "${TRAIN_1_5B:-}" ]; then
  run rerun "$trained" --backbone qwen2.5-coder-1.5b
fi

frozenlm scale "$prompting" "$trained" "$supericl" --out docs/results/scale
# Then the costs, on an idle machine: python benchmarks/scale.py --out docs/results/scale/costs.json
