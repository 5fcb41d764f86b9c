#!/usr/bin/env bash
# taxi-job on a local kind cluster: create the cluster, build the image and load it into
# the nodes, then scripts/first-run.sh (apply, seed sample data, train, predict).
#
#   scripts/kind.sh                       (docker)
#   KIND_EXPERIMENTAL_PROVIDER=podman scripts/kind.sh
#   CLUSTER=name scripts/kind.sh          (default: taxi-job)
set -euo pipefail
cd "$(dirname "$0")/.."

cluster=${CLUSTER:-taxi-job}
engine=${KIND_EXPERIMENTAL_PROVIDER:-docker}
# the tag kustomization.yaml's images: asks for
image="taxi-job:$(sed -n 's/^ *newTag: *//p' kustomization.yaml)"

if ! kind get clusters | grep -qx "$cluster"; then
    kind create cluster --name "$cluster"
fi
kubectl config use-context "kind-$cluster"

# podman names a local image localhost/NAME: name it as the nodes will look it up.
"$engine" build -t "docker.io/library/$image" .
archive=$(mktemp)
trap 'rm -f "$archive"' EXIT
"$engine" save -o "$archive" "docker.io/library/$image"
kind load image-archive "$archive" --name "$cluster"

scripts/first-run.sh
