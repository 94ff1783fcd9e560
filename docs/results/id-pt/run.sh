#!/bin/bash
# The ID-PT study of the README (issue 7) on the embedded model, one run after another
# (about 2 hours on 2 CPU cores). The backbone-embedding runs were made when that encoder was
# the default; --encoder is spelled out here so the script repeats them. Every command leaves a run record: replay them on a bigger
# backbone with `frozenlm rerun <train-id> --backbone B`, then `frozenlm rerun <eval-id> --backbone B`.
set -ex
C="--task-cap 2000 --steps 150 --eval-every 50 --eval-limit 40"
ALL="sentiment,topic,trec,tweets"
D=${1:-runs/idpt}
# 1. one generator, per-task prompts, one shared prompt: the four tasks in mixed batches
frozenlm train --method id-pt --encoder backbone-embeddings --task $ALL $C --out $D/id-pt
frozenlm eval --plugin $D/id-pt --limit 200 --out $D/id-pt/test.json
frozenlm train --method soft-prompt --task $ALL $C --out $D/per-task
frozenlm eval --plugin $D/per-task --limit 200 --out $D/per-task/test.json
frozenlm train --method soft-prompt --shared-prompt --task $ALL $C --out $D/shared
frozenlm eval --plugin $D/shared --limit 200 --out $D/shared/test.json
# 2. sentiment held out: the generator (and the shared-prompt control) never see it
frozenlm train --method id-pt --encoder backbone-embeddings --task topic,trec,tweets $C --out $D/held-out-sentiment
frozenlm eval --plugin $D/held-out-sentiment --task sentiment --limit 200 --out $D/held-out-sentiment/sentiment.json
frozenlm train --method soft-prompt --shared-prompt --task topic,trec,tweets $C --out $D/held-out-sentiment-shared
frozenlm eval --plugin $D/held-out-sentiment-shared --task sentiment --limit 200 --out $D/held-out-sentiment-shared/sentiment.json
# 3. the frozen model alone
for t in sentiment topic trec tweets; do frozenlm eval --task $t --limit 200 --out $D/zero-shot-$t.json; done
# 4. the MiniLM encoder (the default since this study)
frozenlm train --method id-pt --encoder minilm --task $ALL $C --out $D/id-pt-minilm
frozenlm eval --plugin $D/id-pt-minilm --limit 200 --out $D/id-pt-minilm/test.json
