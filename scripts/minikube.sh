#!/usr/bin/env bash
# taxi-job on a local minikube cluster: start it, build the image inside it, then
# scripts/first-run.sh (apply, seed sample data, train, predict).
#
#   scripts/minikube.sh                   (PROFILE=name, default: taxi-job)
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${PROFILE:-taxi-job}
# the tag kustomization.yaml's images: asks for
image="taxi-job:$(sed -n 's/^ *newTag: *//p' kustomization.yaml)"

minikube start --profile "$profile"
kubectl config use-context "$profile"
minikube image build --profile "$profile" -t "$image" .

scripts/first-run.sh
