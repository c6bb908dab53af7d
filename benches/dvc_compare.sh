#!/usr/bin/env bash
# Same-machine comparison of no-op run time: hone vs DVC, on linear pipelines of
# N = 7 and N = 70 trivial shell stages.
#
# Usage:
#   bash benches/dvc_compare.sh
#
# Environment:
#   DVC_VENV   Python venv holding dvc (default /tmp/hone-dvc-venv; created and
#              `pip install dvc` run into it if dvc is not there yet)
#   HONE_BIN   hone binary to use (default: `cargo build --release -q`, then
#              target/release/hone under the repository root)
#   RUNS       timed no-op runs per tool and size (default 10)
#   KEEP       set to 1 to keep the temporary workspaces (their paths are printed)
#
# For each N, a git+dvc repository with a `dvc.yaml` chain and a hone workspace with the
# equivalent `p.yaml` chain are created in fresh temp dirs and populated once. Then each
# tool's no-op run (`dvc repro -q`, `hone -C DIR run p.yaml -q`) is timed RUNS times with
# time.perf_counter around subprocess. Before and after timing the script checks that
# nothing was (or would be) re-run: `dvc status` must say everything is up to date and the
# mtimes of dvc.lock and every out must not change; `hone run --json` must report every
# stage as "cached" and the mtime of p.lock must not change.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
DVC_VENV="${DVC_VENV:-/tmp/hone-dvc-venv}"
RUNS="${RUNS:-10}"
SIZES=(7 70)

if ! [[ "$RUNS" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: RUNS must be a positive integer, got '$RUNS'" >&2
    exit 1
fi

die() { echo "error: $*" >&2; exit 1; }

# --- dvc ---------------------------------------------------------------------------------
if [[ ! -x "$DVC_VENV/bin/dvc" ]]; then
    echo "installing dvc into $DVC_VENV (this can take a few minutes)..." >&2
    if [[ ! -x "$DVC_VENV/bin/python" ]]; then
        python3 -m venv "$DVC_VENV"
    fi
    "$DVC_VENV/bin/python" -m pip install -q --disable-pip-version-check dvc \
        || die "pip install dvc failed"
fi
DVC="$DVC_VENV/bin/dvc"
PY="$DVC_VENV/bin/python"
[[ -x "$DVC" ]] || die "dvc not found at $DVC after install"

# No analytics/updater daemons, in every repo, whatever the repo config says.
export DVC_NO_ANALYTICS=1

# --- hone --------------------------------------------------------------------------------
if [[ -n "${HONE_BIN:-}" ]]; then
    # Absolute, since the timed runs start in the workspace directory.
    if [[ "$HONE_BIN" != */* ]]; then
        HONE="$(command -v "$HONE_BIN")" || die "HONE_BIN not found on PATH: $HONE_BIN"
    else
        HONE="$(realpath "$HONE_BIN")" || die "HONE_BIN not found: $HONE_BIN"
    fi
else
    echo "building hone (cargo build --release -q)..." >&2
    (cd "$REPO_ROOT" && cargo build --release -q)
    HONE="$REPO_ROOT/target/release/hone"
fi
[[ -x "$HONE" ]] || die "hone binary not found or not executable: $HONE"

command -v git >/dev/null || die "git is required"

# --- helpers -----------------------------------------------------------------------------
WORKDIRS=()
cleanup() {
    if [[ "${KEEP:-0}" != 1 ]]; then
        for d in "${WORKDIRS[@]}"; do rm -rf "$d"; done
    fi
}
trap cleanup EXIT

write_dvc_yaml() { # N > dvc.yaml
    local n=$1 i
    echo "stages:"
    echo "  s0:"
    echo "    cmd: echo 0 > out0"
    echo "    outs: [out0]"
    for ((i = 1; i < n; i++)); do
        echo "  s$i:"
        echo "    cmd: cat out$((i - 1)) > out$i && echo $i >> out$i"
        echo "    deps: [out$((i - 1))]"
        echo "    outs: [out$i]"
    done
}

write_hone_yaml() { # N > p.yaml
    local n=$1 i
    echo "name: chain"
    echo "seed: 1"
    echo "stages:"
    echo "  s0:"
    echo "    kind: command"
    echo '    with: { cmd: "echo 0 > ${outputs.out}", outputs: { out: files } }'
    for ((i = 1; i < n; i++)); do
        echo "  s$i:"
        echo "    kind: command"
        echo "    inputs: { prev: s$((i - 1)).out }"
        echo "    with: { cmd: \"cat \${inputs.prev} > \${outputs.out}; echo $i >> \${outputs.out}\", outputs: { out: files } }"
    done
}

# mtimes (ns) of the given files, one line, for before/after comparison.
mtimes() { stat -c '%n %Y.%y' "$@" | md5sum | cut -d' ' -f1; }

dvc_check_clean() { # DIR
    local out
    out="$(cd "$1" && "$DVC" status 2>&1)" || die "dvc status failed in $1: $out"
    grep -q "Data and pipelines are up to date" <<<"$out" \
        || die "dvc repo $1 is not up to date (a no-op repro would re-run stages):"$'\n'"$out"
}

hone_check_clean() { # DIR N
    local json
    json="$("$HONE" -C "$1" run p.yaml --json)" || die "hone run --json failed in $1"
    HONE_JSON="$json" "$PY" - "$2" <<'EOF' || die "hone no-op in $1 executed stages"
import json, os, sys
n = int(sys.argv[1])
s = json.loads(os.environ["HONE_JSON"])
st = [x["status"] for x in s["stages"]]
bad = [x["id"] for x in s["stages"] if x["status"] != "cached"]
if not s.get("ok") or len(st) != n or bad:
    print(f"ok={s.get('ok')} stages={len(st)} not cached: {bad}", file=sys.stderr)
    sys.exit(1)
EOF
}

# time_runs DIR RUNS CMD... -> prints the RUNS durations in ms, space separated.
time_runs() {
    local dir=$1 runs=$2
    shift 2
    "$PY" - "$dir" "$runs" "$@" <<'EOF'
import subprocess, sys, time
d, runs, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
ts = []
for _ in range(runs):
    t0 = time.perf_counter()
    p = subprocess.run(argv, cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t1 = time.perf_counter()
    if p.returncode != 0:
        sys.stderr.write(p.stderr.decode(errors="replace"))
        sys.exit(f"error: {argv} exited {p.returncode} in {d}")
    ts.append((t1 - t0) * 1000.0)
print(" ".join(f"{t:.3f}" for t in ts))
EOF
}

# --- benchmark ---------------------------------------------------------------------------
declare -A RES
for n in "${SIZES[@]}"; do
    echo "setting up N=$n..." >&2

    # (a) git + dvc repo
    dd="$(mktemp -d -t hone-dvc-cmp-dvc-$n.XXXXXX)"
    WORKDIRS+=("$dd")
    (
        cd "$dd"
        git init -q
        "$DVC" init -q
        "$DVC" config core.analytics false
        "$DVC" config core.check_update false
        write_dvc_yaml "$n" > dvc.yaml
        "$DVC" repro -q
        git add -A
        git -c user.name=bench -c user.email=bench@localhost commit -q -m populate
    ) || die "dvc setup failed for N=$n in $dd"
    [[ -f "$dd/out$((n - 1))" ]] || die "dvc did not produce out$((n - 1))"
    dvc_check_clean "$dd"

    # (b) hone workspace
    hd="$(mktemp -d -t hone-dvc-cmp-hone-$n.XXXXXX)"
    WORKDIRS+=("$hd")
    write_hone_yaml "$n" > "$hd/p.yaml"
    "$HONE" -C "$hd" run p.yaml -q || die "hone populate failed for N=$n in $hd"
    hone_check_clean "$hd" "$n"

    if [[ "${KEEP:-0}" == 1 ]]; then
        echo "  dvc repo: $dd" >&2
        echo "  hone workspace: $hd" >&2
    fi

    dvc_files=("$dd/dvc.lock")
    for ((i = 0; i < n; i++)); do dvc_files+=("$dd/out$i"); done
    dvc_before="$(mtimes "${dvc_files[@]}")"
    hone_before="$(mtimes "$hd/p.lock")"

    echo "timing N=$n (RUNS=$RUNS)..." >&2
    RES[dvc,$n]="$(time_runs "$dd" "$RUNS" "$DVC" repro -q)"
    RES[hone,$n]="$(time_runs "$hd" "$RUNS" "$HONE" -C "$hd" run p.yaml -q)"

    [[ "$(mtimes "${dvc_files[@]}")" == "$dvc_before" ]] \
        || die "N=$n: dvc.lock or an out changed during the timed no-op dvc repro runs"
    [[ "$(mtimes "$hd/p.lock")" == "$hone_before" ]] \
        || die "N=$n: p.lock changed during the timed no-op hone runs"
    dvc_check_clean "$dd"
    hone_check_clean "$hd" "$n"
done

# --- report ------------------------------------------------------------------------------
cpu_model="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)"
echo
echo "no-op run time, hone vs dvc (linear chains of trivial shell stages)"
echo "  dvc:   $("$DVC" --version)  ($DVC)"
echo "  hone:  $("$HONE" --version)  ($HONE)"
if [[ -z "${HONE_BIN:-}" ]] && rev="$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null)"; then
    [[ -n "$(git -C "$REPO_ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]] \
        && rev="$rev (+ uncommitted changes)"
    echo "  tree:  $rev"
fi
echo "  nproc: $(nproc)"
echo "  cpu:   ${cpu_model:-unknown}"
echo "  runs:  $RUNS per tool and size (after one populating run)"
echo
args=()
for n in "${SIZES[@]}"; do args+=("$n" "${RES[dvc,$n]}" "${RES[hone,$n]}"); done
"$PY" - "${args[@]}" <<'EOF'
import statistics, sys
a = sys.argv[1:]
rows = []
print(f"{'stages':>6}  {'tool':<4}  {'median ms':>10}  {'min ms':>10}  {'max ms':>10}  {'dvc/hone':>9}")
for i in range(0, len(a), 3):
    n = int(a[i])
    dvc = [float(x) for x in a[i + 1].split()]
    hone = [float(x) for x in a[i + 2].split()]
    md, mh = statistics.median(dvc), statistics.median(hone)
    print(f"{n:>6}  {'dvc':<4}  {md:>10.1f}  {min(dvc):>10.1f}  {max(dvc):>10.1f}  {'':>9}")
    print(f"{n:>6}  {'hone':<4}  {mh:>10.1f}  {min(hone):>10.1f}  {max(hone):>10.1f}  {md / mh:>8.1f}x")
EOF
