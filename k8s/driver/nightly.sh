#!/bin/sh
# /bin/sh /etc/batchrec/driver/nightly.sh   (the CronJob's command; ServiceAccount batchrec-driver)
#
# One night = one date, three steps, each `batchrec run` on the same job file and date:
#   1. prepare        here, on CPU                               --set stages=prepare
#   2. train          DDP PyTorchJob (torchrun on GPU pods)      --set stages=train
#   3. evaluate, gate, score, index   RayJob with GPU workers    --set stages=evaluate,score,index
# Every stage skips what is already published for the date, so a retry of this pod (the Job's
# backoffLimit) resumes where the last attempt stopped. Exit codes reach the CronJob: 2 = bad
# job file or input, 3 = quality gate refused (neither is retried), anything else is retried.
set -eu

JOB=/etc/batchrec/job/job.yaml
TEMPLATES=/etc/batchrec/driver
DATE="${BATCHREC_DATE:-$(date -u +%F)}"
export BATCHREC_DATE="$DATE" BATCHREC_RUN_ID="nightly-$DATE"
POLL_S="${BATCHREC_POLL_S:-30}"

log() { echo "{\"ts\":\"$(date -u +%FT%TZ)\",\"level\":\"info\",\"run_id\":\"$BATCHREC_RUN_ID\",\"stage\":\"driver\",\"msg\":\"$*\"}" >&2; }

# Create a workload from its template for this date (name suffixed with the date; image = ours),
# replacing a leftover from an earlier attempt, and print its kind/name.
create() {
  name="$1-$DATE"
  kubectl delete "$2" "$name" --ignore-not-found --wait=true >&2
  sed -e "s|^  name: $1 .*|  name: $name|" \
      -e "s|\${BATCHREC_DATE}|$DATE|g" \
      -e "s|image: batchrec:.*|image: $BATCHREC_IMAGE|" \
      "$TEMPLATES/$3" | kubectl create -f - -o name
}

# Wait until the object's state (a jsonpath) matches the ok pattern or one of the failure patterns.
wait_for() {
  obj="$1" path="$2" ok="$3"
  shift 3
  while :; do
    state="$(kubectl get "$obj" -o "jsonpath=$path" 2>/dev/null || echo unknown)"
    # shellcheck disable=SC2254  # the patterns are meant to glob
    case "$state" in $ok) log "$obj: $state"; return 0 ;; esac
    for bad in "$@"; do
      # shellcheck disable=SC2254
      case "$state" in $bad) log "$obj failed: $state"; return 1 ;; esac
    done
    sleep "$POLL_S"
  done
}

log "nightly run for $DATE"
batchrec run "$JOB" --set stages=prepare

train="$(create batchrec-train pytorchjob pytorchjob-train.yaml)"
log "training: $train"
wait_for "$train" '{.status.conditions[?(@.status=="True")].type}' '*Succeeded*' '*Failed*'

score="$(create batchrec-score rayjob rayjob-score.yaml)"
log "evaluate + gate + score + index: $score"
if ! wait_for "$score" '{.status.jobDeploymentStatus}/{.status.jobStatus}' '*/SUCCEEDED' \
    'Failed/*' '*/FAILED' '*/STOPPED'; then
  # Was it the quality gate? Re-judging the published evaluation is cheap and exits 3 if so.
  batchrec run "$JOB" --set 'stages=[]'
  exit 1
fi
log "done: outputs published for $DATE"
