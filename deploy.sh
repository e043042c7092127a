#!/usr/bin/env bash
# Deploy the cvat-tools WBC detector to CVAT's Nuclio (serverless) as "pth-cvat-tools-wbc".
#
#   ./deploy.sh [--gpu] [--project cvat] [--platform local|kube] [--weights DIR]
#               [--network cvat_cvat] [--registry URL] [--dry-run]
#
# CVAT must run with its serverless component (from the CVAT checkout):
#   docker compose -f docker-compose.yml -f components/serverless/docker-compose.serverless.yml up -d
# The steps mirror CVAT's serverless/deploy_cpu.sh / deploy_gpu.sh: create the "cvat" project,
# then `nuctl deploy --project-name cvat --path DIR --file function.yaml --platform local
# --platform-config '{"attributes": {"network": "cvat_cvat"}}'`. Running it again redeploys
# (nuctl deploy replaces the function; the project is created only when missing).
#
# The build context is staged in a temporary folder: the function's main.py and YAML, plus the
# cvat-tools package as ./cvat-tools with the model bundles baked in (from --weights DIR, which
# holds segmenter/ classifier/ refiner/ bundles, else the shipped cvat_tools/weights/).
set -euo pipefail

# CVAT pins the Nuclio dashboard in components/serverless/docker-compose.serverless.yml
# (image quay.io/nuclio/dashboard:1.15.9-amd64); nuctl should be the same version.
NUCLIO_VERSION="1.15.9"
FUNCTION_NAME="pth-cvat-tools-wbc"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
FUNCTION_DIR="$REPO/serverless/pytorch/cvat_tools/wbc/nuclio"

GPU=0
PROJECT="cvat"
PLATFORM="local"
WEIGHTS=""
NETWORK="cvat_cvat"
REGISTRY=""
DRY_RUN=0
CLASSICAL=0

usage() {
    sed -n '2,5p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<EOF

  --gpu             deploy function-gpu.yaml (CUDA image, nvidia.com/gpu: 1)
  --project NAME    Nuclio project (CVAT lists functions of project "cvat"; default cvat)
  --platform P      local (docker, default) or kube
  --weights DIR     folder with segmenter/ classifier/ refiner/ bundles to bake in
                    (default: the shipped cvat_tools/weights/); it must hold segmenter/
  --classical-segmenter  with --weights DIR lacking segmenter/: deploy the classical
                    watershed segmenter (asked for, never a silent fallback)
  --network NAME    docker network of CVAT for --platform local (default cvat_cvat)
  --registry URL    image registry for --platform kube
  --dry-run         print the nuctl commands instead of running them (nuctl need
                    not be installed)
EOF
}

die() { echo "deploy.sh: error: $*" >&2; exit 1; }
warn() { echo "deploy.sh: warning: $*" >&2; }

need_value() { [[ $# -ge 2 && -n "$2" && "$2" != --* ]] || die "$1 needs a value (see --help)"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --gpu) GPU=1; shift ;;
        --project) need_value "$@"; PROJECT="$2"; shift 2 ;;
        --platform) need_value "$@"; PLATFORM="$2"; shift 2 ;;
        --weights) need_value "$@"; WEIGHTS="$2"; shift 2 ;;
        --network) need_value "$@"; NETWORK="$2"; shift 2 ;;
        --registry) need_value "$@"; REGISTRY="$2"; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        --classical-segmenter) CLASSICAL=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option '$1'" ;;
    esac
done

case "$PLATFORM" in
    local|kube) ;;
    *) die "--platform must be local or kube, not '$PLATFORM'" ;;
esac

# Print a command the way a shell would read it back; run it unless --dry-run.
run() {
    printf '+'
    printf ' %q' "$@"
    printf '\n'
    if [[ $DRY_RUN -eq 0 ]]; then
        "$@"
    fi
}

# -- nuctl and its version ------------------------------------------------------------------
INSTALL_NUCTL="Install the version CVAT's dashboard runs:
  curl -sSL -o nuctl https://github.com/nuclio/nuclio/releases/download/${NUCLIO_VERSION}/nuctl-${NUCLIO_VERSION}-linux-amd64
  chmod +x nuctl && sudo mv nuctl /usr/local/bin/nuctl"
HAVE_NUCTL=1
if ! command -v nuctl >/dev/null 2>&1; then
    # a dry run only prints the commands: it previews a deployment before nuctl is installed
    [[ $DRY_RUN -eq 1 ]] || die "nuctl (Nuclio's CLI) is not on PATH. $INSTALL_NUCTL"
    HAVE_NUCTL=0
    warn "nuctl (Nuclio's CLI) is not on PATH; the commands below need it. $INSTALL_NUCTL"
fi

version_of() { grep -Eo '[0-9]+\.[0-9]+\.[0-9]+' | head -n 1; }

NUCTL_VERSION=""
if [[ $HAVE_NUCTL -eq 1 ]]; then
    NUCTL_VERSION="$(nuctl version 2>/dev/null | version_of || true)"
fi
DASHBOARD_VERSION=""
if command -v docker >/dev/null 2>&1; then
    # the dashboard container of CVAT's serverless compose file is named "nuclio"
    DASHBOARD_VERSION="$(docker inspect --format '{{.Config.Image}}' nuclio 2>/dev/null | version_of || true)"
fi
EXPECTED="${DASHBOARD_VERSION:-$NUCLIO_VERSION}"
if [[ $HAVE_NUCTL -eq 0 ]]; then
    :  # already said: nuctl is missing
elif [[ -z "$NUCTL_VERSION" ]]; then
    warn "could not read 'nuctl version'; CVAT's dashboard runs Nuclio $EXPECTED"
elif [[ "$NUCTL_VERSION" != "$EXPECTED" ]]; then
    if [[ -n "$DASHBOARD_VERSION" ]]; then SOURCE="the running nuclio container"; else SOURCE="pinned by CVAT"; fi
    warn "nuctl is $NUCTL_VERSION but the Nuclio dashboard is $EXPECTED ($SOURCE);" \
         "mismatched versions can fail to deploy: install nuctl $EXPECTED"
fi

# -- model bundles --------------------------------------------------------------------------
if [[ -n "$WEIGHTS" ]]; then
    [[ -d "$WEIGHTS" ]] || die "--weights $WEIGHTS: no such folder"
    WEIGHTS="$(cd "$WEIGHTS" && pwd)"
    SOURCE_WEIGHTS="$WEIGHTS"
else
    SOURCE_WEIGHTS="$REPO/cvat_tools/weights"
fi
if [[ ! -f "$SOURCE_WEIGHTS/classifier/manifest.json" ]]; then
    die "no classifier bundle in $SOURCE_WEIGHTS/classifier; train one ('cvat-tools train classifier') and pass --weights DIR"
fi
if [[ -f "$SOURCE_WEIGHTS/segmenter/manifest.json" ]]; then
    [[ $CLASSICAL -eq 0 ]] || die "--classical-segmenter: $SOURCE_WEIGHTS already holds a segmenter/ bundle"
elif [[ -n "$WEIGHTS" && $CLASSICAL -eq 0 ]]; then
    die "no segmenter bundle in $WEIGHTS/segmenter; add one ('cvat-tools train segmenter'), or pass --classical-segmenter to deploy the watershed segmenter"
else
    warn "no segmenter bundle in $SOURCE_WEIGHTS: the function uses the classical watershed segmenter"
fi
[[ -f "$SOURCE_WEIGHTS/refiner/manifest.json" ]] \
    || warn "no refiner bundle in $SOURCE_WEIGHTS: the classifier's answer is final"

# -- build context --------------------------------------------------------------------------
STAGE="$(mktemp -d "${TMPDIR:-/tmp}/cvat-tools-nuclio.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT
cp "$FUNCTION_DIR/main.py" "$FUNCTION_DIR/function.yaml" "$FUNCTION_DIR/function-gpu.yaml" "$STAGE/"
mkdir -p "$STAGE/cvat-tools"
cp "$REPO/pyproject.toml" "$STAGE/cvat-tools/"
if [[ -f "$REPO/README.md" ]]; then cp "$REPO/README.md" "$STAGE/cvat-tools/"; else : > "$STAGE/cvat-tools/README.md"; fi
cp -R "$REPO/cvat_tools" "$STAGE/cvat-tools/cvat_tools"
find "$STAGE/cvat-tools" -name __pycache__ -type d -prune -exec rm -rf {} +
if [[ -n "$WEIGHTS" ]]; then
    rm -rf "$STAGE/cvat-tools/cvat_tools/weights"
    mkdir -p "$STAGE/cvat-tools/cvat_tools/weights"
    for kind in segmenter classifier refiner; do
        if [[ -f "$WEIGHTS/$kind/manifest.json" ]]; then
            cp -R "$WEIGHTS/$kind" "$STAGE/cvat-tools/cvat_tools/weights/$kind"
        fi
    done
    if [[ -f "$REPO/cvat_tools/weights/MODEL_CARD.md" ]]; then
        cp "$REPO/cvat_tools/weights/MODEL_CARD.md" "$STAGE/cvat-tools/cvat_tools/weights/"
    fi
fi
if [[ $CLASSICAL -eq 1 ]]; then  # the explicit choice, as cvat_tools.bundle.save_classical_segmenter writes it
    mkdir -p "$STAGE/cvat-tools/cvat_tools/weights/segmenter"
    printf '%s\n' '{"format": "cvat-tools-bundle", "format_version": 1, "kind": "segmenter", "labels": ["wbc"], "architecture": {"name": "classical"}}' \
        > "$STAGE/cvat-tools/cvat_tools/weights/segmenter/manifest.json"
fi

if [[ $GPU -eq 1 ]]; then FUNCTION_FILE="function-gpu.yaml"; else FUNCTION_FILE="function.yaml"; fi
echo "Deploying $FUNCTION_NAME ($FUNCTION_FILE, platform $PLATFORM, project $PROJECT, models from $SOURCE_WEIGHTS)"

# -- project (idempotent) -------------------------------------------------------------------
if [[ $DRY_RUN -eq 1 ]]; then
    echo "# (creates the project only if 'nuctl get project $PROJECT' fails)"
    run nuctl create project "$PROJECT" --platform "$PLATFORM"
elif nuctl get project "$PROJECT" --platform "$PLATFORM" >/dev/null 2>&1; then
    echo "Nuclio project '$PROJECT' exists"
else
    run nuctl create project "$PROJECT" --platform "$PLATFORM"
fi

# -- deploy ---------------------------------------------------------------------------------
DEPLOY=(nuctl deploy "$FUNCTION_NAME" --project-name "$PROJECT" --path "$STAGE"
        --file "$STAGE/$FUNCTION_FILE" --platform "$PLATFORM")
if [[ "$PLATFORM" == "local" ]]; then
    DEPLOY+=(--platform-config "{\"attributes\": {\"network\": \"$NETWORK\"}}")
fi
if [[ -n "$REGISTRY" ]]; then
    DEPLOY+=(--registry "$REGISTRY")
elif [[ "$PLATFORM" == "kube" ]]; then
    warn "--platform kube usually needs --registry URL to push the image"
fi
run "${DEPLOY[@]}"
run nuctl get function "$FUNCTION_NAME" --platform "$PLATFORM"

if [[ $DRY_RUN -eq 1 ]]; then
    echo "Dry run: nothing was deployed."
else
    echo "Done: in CVAT, Actions > Automatic annotation > 'WBC segmentation + classification (cvat-tools)'."
fi
