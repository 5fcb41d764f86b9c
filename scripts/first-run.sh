#!/usr/bin/env bash
# The first run on any cluster whose nodes have the image: apply the kustomization,
# put sample data on the volume, train once, predict once. kind.sh and minikube.sh call
# it; on a real cluster, push the image and `kustomize edit set image` first.
#
#   scripts/first-run.sh        (kubectl's current context)
set -euo pipefail
cd "$(dirname "$0")/.."

ns=taxi-job
run=$(date +%Y%m%d%H%M%S)

# Start a Job from a CronJob (a schedule or a suspended template) and wait for it.
run_job() {
    local cronjob=$1 job="$1-$run" timeout=$2
    kubectl -n "$ns" create job "$job" --from="cronjob/$cronjob"
    if ! kubectl -n "$ns" wait --for=condition=complete --timeout="$timeout" "job/$job"; then
        kubectl -n "$ns" describe "job/$job" | tail -n 20
        kubectl -n "$ns" logs "job/$job" --all-containers --tail=20 || true
        exit 1
    fi
    # the command's JSON summary, as `taxi-job runs` reads it from the pod's status
    kubectl -n "$ns" get pods -l "job-name=$job" \
        -o jsonpath='{range .items[*].status.containerStatuses[*]}{.name}: {.state.terminated.message}{"\n"}{end}'
}

kubectl apply -k .
run_job seed-sample-data 10m
run_job train 30m
run_job infer 10m
echo
echo "Trained and predicted. From now on infer runs every minute and train every Sunday:"
echo "  kubectl -n $ns get cronjobs,jobs,pods"
