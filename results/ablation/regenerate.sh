#!/usr/bin/env bash
# Regenerate one published study (docs/studies.md#the-published-studies), resumable on any machine:
#
#   results/ablation/regenerate.sh mnist-ofat|mnist-path|fashion-ofat|mnist-factorial
#
# Run it from a git worktree pinned at one commit (git worktree add --detach ../study-wt <commit>),
# so that changes on main never alter a study while it runs. It
#   1. imports the study's archive (results/ablation/archive/<experiment>, lenet5.archive) into the
#      store, so that what earlier machines trained is skipped and their unfinished runs continue
#      from their last committed pass;
#   2. starts LAUNCHES launches of the study command side by side (one thread each; they split the
#      study's jobs through the store's locks), then one more that trains whatever is left and
#      writes the report to results/ablation/<study>;
#   3. exports the store to the archive every EXPORT_EVERY seconds and at the end: commit the
#      archive before the machine goes, and the report folder when the study is done.
#
# Environment (defaults): STORE ($HOME/lenet5-studies/mlflow.db), LAUNCHES (2), EXPORT_EVERY (600),
# ARCHIVE (this tree's results/ablation/archive), OUT (this tree's results/ablation), MNIST_ROOT
# (../shared/data beside this tree), PYTHON (this tree's .venv/bin/python).
set -uo pipefail
study=${1:?"usage: $0 mnist-ofat|mnist-path|fashion-ofat|mnist-factorial"}
tree=$(cd "$(dirname "$0")/../.." && pwd)
STORE=${STORE:-$HOME/lenet5-studies/mlflow.db}
LAUNCHES=${LAUNCHES:-2}
EXPORT_EVERY=${EXPORT_EVERY:-600}
ARCHIVE=${ARCHIVE:-$tree/results/ablation/archive}
OUT=${OUT:-$tree/results/ablation}
PYTHON=${PYTHON:-$tree/.venv/bin/python}
export MNIST_ROOT=${MNIST_ROOT:-$(cd "$tree/.." && pwd)/shared/data} OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

stacked=(hydra/launcher=stacked hydra.launcher.models_per_process=7 trainer.compile=true)
case $study in
  mnist-ofat) experiment=fair_mnist args=(sweep=ofat study.final.min_seeds=10 study.final.max_seeds=16) ;;
  mnist-path) experiment=fair_mnist args=(sweep=path study.final.min_seeds=10 study.final.max_seeds=16) ;;
  fashion-ofat) experiment=fair_fashion args=(sweep=ofat data.dataset=fashion_mnist study.tune.trials=4 study.tune.passes=3
    study.final.passes=10 study.final.min_seeds=6 study.final.max_seeds=12) ;;
  # The 16 cells of pool x activation x head, in the experiment of mnist-ofat, whose six one-factor cells it reuses.
  mnist-factorial) experiment=fair_mnist args=(sweep=pool_act_head study.final.min_seeds=6 study.final.max_seeds=16) ;;
  *) echo "error: unknown study '$study'; choose mnist-ofat, mnist-path, fashion-ofat or mnist-factorial" >&2; exit 2 ;;
esac
uri="sqlite:///$STORE"
command=("$PYTHON" -m lenet5.study "${args[@]}" "tracking.experiment=$experiment" "tracking.uri=$uri"
  "study.out=$OUT/$study" "${stacked[@]}")

mkdir -p "$(dirname "$STORE")"
cd "$tree" || exit 2
if [ -d "$ARCHIVE/$experiment/runs" ]; then
  "$PYTHON" -m lenet5.archive import --uri "$uri" --from "$ARCHIVE/$experiment" || exit 2
fi
export_now() { "$PYTHON" -m lenet5.archive export --uri "$uri" --experiment "$experiment" --to "$ARCHIVE/$experiment"; }
(while sleep "$EXPORT_EVERY"; do export_now; done) &
exporter=$!
trap 'kill $exporter 2>/dev/null; export_now' EXIT

for i in $(seq "$LAUNCHES"); do
  "${command[@]}" > "$(dirname "$STORE")/$study.launch$i.log" 2>&1 &
  sleep 30  # the first launch creates the study's parent run; the others find it
done
wait $(jobs -p | grep -vx "$exporter")
"${command[@]}"  # trains what the launches left (a job one was training when the other ended) and writes the report
