#!/usr/bin/env bash
# The first run on any cluster whose nodes have the image: apply the kustomization,
# put sample data on the volume, train once, predict once. kind.sh and minikube.sh call
# it, and so does the cluster suite (tests/cluster/test_e2e.py) on every CI run. On a real
# cluster, push the image and `kustomize edit set image` first.
#
#   scripts/first-run.sh [DIR]   (kubectl's current context; DIR: the kustomization, default
#                                 this repository's; TAXI_JOB_NAMESPACE: the namespace it
#                                 puts everything in, default taxi-job)
set -euo pipefail
cd "$(dirname "$0")/.."

kustomization=${1:-.}
ns=${TAXI_JOB_NAMESPACE:-taxi-job}
run=$(date +%Y%m%d%H%M%S)

# Wait until the Job completes (return 0), fails, disappears or is not done after $2
# seconds (return 1). Not `kubectl wait --for=condition=complete`: it does not return when
# the Job fails, so a failed run would hang here for the whole timeout. Since Kubernetes
# 1.31 the final condition follows SuccessCriteriaMet or FailureTarget: only Complete or
# Failed ends it.
wait_job() {
    local job=$1 timeout=$2 deadline state refused
    deadline=$((SECONDS + timeout))
    while true; do
        # "NAME CONDITIONS", or nothing once the Job is gone; a failed call (the API
        # server busy for a moment) is not an answer: look again.
        state=$(kubectl -n "$ns" get "job/$job" --ignore-not-found \
            -o jsonpath='{.metadata.name}{" "}{.status.conditions[?(@.status=="True")].type}') \
            || state="?"
        case " $state " in
            "  ") echo "job/$job was deleted before it finished" >&2; return 1 ;;
            *" Complete "*) return 0 ;;
            *" Failed "*) echo "job/$job failed" >&2; return 1 ;;
        esac
        # A pod the namespace's Pod Security level refuses is never created, and a retry
        # cannot change that: stop at the Job controller's event instead of waiting out the
        # timeout. (Not every FailedCreate: "serviceaccount not found" in a namespace just
        # made passes in a moment.)
        refused=$(kubectl -n "$ns" get events --field-selector \
            "involvedObject.kind=Job,involvedObject.name=$job,reason=FailedCreate" \
            -o jsonpath='{range .items[*]}{.message}{"\n"}{end}' \
            | grep -m 1 'violates PodSecurity') || refused=""
        if [ -n "$refused" ]; then
            echo "job/$job cannot create its pod: $refused" >&2
            return 1
        fi
        if ((SECONDS >= deadline)); then
            echo "job/$job did not finish within ${timeout}s" >&2
            return 1
        fi
        sleep 5
    done
}

# Start a Job from a CronJob (a schedule or a suspended template) and wait for it.
# `kubectl create job --from` makes the CronJob the Job's controller, and a CronJob
# deletes the Jobs it controls beyond its history limit: infer keeps one, so the next
# scheduled infer (every minute) could delete ours before it was read. Ours keep the
# owner (deleted with the CronJob) without being controlled, and go after a week, as
# `taxi-job launch` makes them.
uncontrolled='[{"op": "replace", "path": "/metadata/ownerReferences/0/controller", "value": false},'
uncontrolled+=' {"op": "add", "path": "/spec/ttlSecondsAfterFinished", "value": 604800}]'
run_job() {
    local cronjob=$1 job="$1-$run" timeout=$2
    kubectl -n "$ns" create job "$job" --from="cronjob/$cronjob" --dry-run=client -o json \
        | kubectl patch --local -f - --type=json -p "$uncontrolled" -o json \
        | kubectl -n "$ns" create -f -
    if ! wait_job "$job" "$timeout"; then
        kubectl -n "$ns" describe "job/$job" | tail -n 20 || true
        kubectl -n "$ns" logs "job/$job" --all-containers --tail=20 || true
        exit 1
    fi
    # the command's JSON summary, as `taxi-job runs` reads it from the pod's status
    kubectl -n "$ns" get pods -l "job-name=$job" \
        -o jsonpath='{range .items[*].status.containerStatuses[*]}{.name}: {.state.terminated.message}{"\n"}{end}'
}

kubectl apply -k "$kustomization"
run_job seed-sample-data 600
run_job train 1800
run_job infer 600
echo
echo "Trained and predicted. From now on infer runs every minute and train every Sunday:"
echo "  kubectl -n $ns get cronjobs,jobs,pods"
