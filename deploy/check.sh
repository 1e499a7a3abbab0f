#!/usr/bin/env bash
# Offline checks of everything in deploy/: the Helm chart renders (without
# helm, through deploy/helm/render.py), the plain manifest in deploy/k8s/ is
# exactly the rendered chart, every manifest and rendering passes
# kubernetes-validate in strict mode (unknown fields are errors) for the oldest
# and newest Kubernetes versions we support, and the systemd unit passes
# `systemd-analyze verify` and a `systemd-analyze security` threshold.
#
# Run from anywhere: bash deploy/check.sh. Needs python3 with pip (and network
# access to PyPI the first time); installs kubernetes-validate into a virtual
# environment under ~/.cache so nothing system-wide changes.
set -euo pipefail
cd "$(dirname "$0")"

KUBERNETES_VALIDATE=1.37.0
# Oldest and newest Kubernetes versions whose schemas that release ships and
# which we claim to support.
KUBERNETES_VERSIONS=(1.29.0 1.37.0)
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/mecha-deploy-check/venv-$KUBERNETES_VALIDATE"

fail() {
    echo "deploy/check.sh: $*" >&2
    exit 1
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "== kubernetes-validate $KUBERNETES_VALIDATE"
if [ ! -x "$VENV/bin/kubernetes-validate" ]; then
    python3 -m venv "$VENV" || fail "cannot create a Python virtual environment in $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "kubernetes-validate==$KUBERNETES_VALIDATE" \
        || fail "pip install kubernetes-validate==$KUBERNETES_VALIDATE failed (is PyPI reachable?)"
fi
PY="$VENV/bin/python"
"$VENV/bin/kubernetes-validate" --version

echo "== render.py: its YAML-subset parser agrees with PyYAML"
"$PY" helm/render.py --check-parser helm/mecha/Chart.yaml helm/mecha/values.yaml helm/ci-values.yaml \
    || fail "render.py reads a values file differently from PyYAML"

echo "== the Helm chart renders; deploy/k8s/daemonset.yaml is its current rendering"
"$PY" helm/render.py --k8s-manifest -o "$work/daemonset.yaml"
if ! diff -u k8s/daemonset.yaml "$work/daemonset.yaml"; then
    fail "deploy/k8s/daemonset.yaml is stale; run: python3 deploy/helm/render.py --k8s-manifest -o deploy/k8s/daemonset.yaml"
fi
"$PY" helm/render.py -f helm/ci-values.yaml --name mecha-ci --namespace ci -o "$work/chart-ci-values.yaml"

echo "== kubernetes-validate --strict"
manifests=(k8s/namespace.yaml k8s/daemonset.yaml k8s/example-app.yaml "$work/chart-ci-values.yaml")
for version in "${KUBERNETES_VERSIONS[@]}"; do
    "$VENV/bin/kubernetes-validate" --strict --quiet --kubernetes-version "$version" "${manifests[@]}" \
        || fail "manifests do not validate against Kubernetes $version"
    echo "ok: ${#manifests[@]} files against Kubernetes $version"
done

echo "== systemd unit"
if command -v systemd-analyze >/dev/null 2>&1; then
    # verify checks that ExecStart's binary exists; mechad is not installed
    # on the machine running the check, so a stand-in executable takes its
    # place. Everything else (keys, values, sections) is verified as written.
    mkdir "$work/systemd"
    sed "s#^ExecStart=/usr/local/bin/mechad #ExecStart=$(command -v true) #" \
        systemd/mechad.service > "$work/systemd/mechad.service"
    grep -q "^ExecStart=$(command -v true) " "$work/systemd/mechad.service" \
        || fail "systemd/mechad.service: ExecStart no longer starts /usr/local/bin/mechad; update check.sh"
    out="$(systemd-analyze verify "$work/systemd/mechad.service" 2>&1)" \
        || fail "systemd-analyze verify failed: $out"
    # verify only warns about unknown keys; treat any output as a failure.
    [ -z "$out" ] || fail "systemd-analyze verify complained: $out"
    # Exposure is scored 0-10 (shown) and compared as 0-100: fail above 2.0.
    systemd-analyze security --offline=yes --threshold=20 "$work/systemd/mechad.service" >"$work/security.txt" 2>&1 \
        || { cat "$work/security.txt"; fail "the unit's systemd-analyze security exposure is above 2.0"; }
    echo "ok: verify clean; $(grep -o 'Overall exposure level.*' "$work/security.txt")"
else
    echo "skipped: systemd-analyze is not installed"
fi

echo "deploy/check.sh: all checks passed"
