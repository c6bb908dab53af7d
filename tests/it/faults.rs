//! The fault-injection sweep: `hone run` and `hone gc` killed (SIGKILL) just before each
//! of their `fsync`, `unlink` and `rename` calls in turn, through the LD_PRELOAD shim in
//! `tests/faults/shim.c`, and each kill followed by an ordinary run. After every kill no
//! damaged object may be in the store, the next run must succeed without using a damaged
//! or half-deleted object, and its lock must equal an uninterrupted run's.
//!
//! One command runs it and prints its figures: `cargo test --test it faults -- --nocapture`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{Workspace, hone_bin};

/// a (a file), d (a directory of three files), u (reads d), c (reads a and u).
fn spec(words: [&str; 3]) -> String {
    format!(
        "name: f\nstages:\n  a: {{kind: command, with: {{cmd: \"echo a > ${{outputs.o}}\", outputs: {{o: files}}}}}}\n  d: {{kind: command, with: {{cmd: \"mkdir ${{outputs.o}}; for w in {} {} {}; do echo $w > ${{outputs.o}}/f$w; done\", outputs: {{o: files}}}}}}\n  u: {{kind: command, inputs: {{i: d.o}}, with: {{cmd: \"cat ${{inputs.i}}/* > ${{outputs.o}}\", outputs: {{o: files}}}}}}\n  c: {{kind: command, inputs: {{a: a.o, u: u.o}}, with: {{cmd: \"cat ${{inputs.a}} ${{inputs.u}} > ${{outputs.o}}\", outputs: {{o: files}}}}}}\n",
        words[0], words[1], words[2]
    )
}

const V1: [&str; 3] = ["1", "2", "3"];
const V2: [&str; 3] = ["4", "5", "6"];
const OPS: [&str; 3] = ["fsync", "unlink", "rename"];

/// Builds the shim with the system C compiler (the one Rust links with). `None` (with a
/// message) where there is none, which fails the test under `CI=true`.
fn shim() -> Option<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/faults/shim.c");
    let out = std::env::temp_dir().join(format!("hone-fault-shim-{}.so", std::process::id()));
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .arg("-ldl")
        .status();
    match built {
        Ok(s) if s.success() => Some(out),
        other => {
            let why = format!("cannot build the fault-injection shim ({other:?})");
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// `hone ARGS` in `ws` under the shim: kill before the `at`-th `op` call (0: count only).
/// Returns whether it was killed and how many calls it saw.
fn faulted(ws: &Workspace, shim: &Path, op: &str, at: usize, args: &[&str]) -> (bool, usize) {
    let count = ws.path("fault-count");
    let status = Command::new(hone_bin())
        .args(args)
        .current_dir(ws.root())
        .env("LD_PRELOAD", shim)
        .env("HONE_FAULT_OP", op)
        .env("HONE_FAULT_AT", at.to_string())
        .env("HONE_FAULT_COUNT", &count)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    let seen = std::fs::read_to_string(&count)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    let _ = std::fs::remove_file(&count);
    #[cfg(unix)]
    let killed = {
        use std::os::unix::process::ExitStatusExt;
        status.signal() == Some(9)
    };
    #[cfg(not(unix))]
    let killed = !status.success();
    (killed, seen)
}

/// Objects in the store that do not match their digest (by `hone verify`): what a later
/// run could reuse if it trusted the store blindly.
fn damaged(ws: &Workspace) -> usize {
    let out = ws.hone(&["verify"]);
    out.stdout.matches("is corrupt").count() + out.stdout.matches("cannot be read").count()
}

/// What must hold after a kill and one ordinary run; the first thing that does not.
fn recovery(ws: &Workspace, reference_lock: &str, words: [&str; 3]) -> Result<(), String> {
    let out = ws.hone(&["run", "-j", "1", "f.yaml"]);
    if out.code != 0 {
        return Err(format!(
            "the next run failed: {}\n{}",
            out.stdout, out.stderr
        ));
    }
    if ws.read("f.lock") != reference_lock {
        return Err(format!("the lock differs:\n{}", ws.read("f.lock")));
    }
    let c = ws.hone(&["show", "f.yaml", "c.o"]).stdout;
    let path = c
        .lines()
        .find_map(|l| l.trim().strip_prefix("path "))
        .ok_or_else(|| format!("no path in\n{c}"))?
        .trim()
        .to_string();
    let expected = format!("a\n{}\n", words.join("\n"));
    if ws.read(&path) != expected {
        return Err(format!("c.o reads {:?}", ws.read(&path)));
    }
    let verify = ws.hone(&["verify"]).stdout;
    if !verify.contains("all intact") {
        return Err(verify);
    }
    let leftovers: Vec<_> = std::fs::read_dir(ws.root())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    if !leftovers.is_empty() {
        return Err(format!("left {leftovers:?}"));
    }
    Ok(())
}

#[test]
#[cfg(target_os = "linux")]
fn every_kill_point_of_run_and_gc_leaves_a_store_the_next_run_trusts_rightly() {
    let Some(shim) = shim() else { return };
    let reference = |words| {
        let ws = Workspace::new();
        ws.write("f.yaml", &spec(words));
        ws.ok(&["run", "-q", "-j", "1", "f.yaml"]);
        ws.read("f.lock")
    };
    let (lock_v1, lock_v2) = (reference(V1), reference(V2));

    // `hone run` from an empty store, killed at each point.
    let mut failures = Vec::new();
    let mut report = Vec::new();
    let (mut points, mut damaged_after_kill, mut wrong) = (0, 0, 0);
    for op in OPS {
        let ws = Workspace::new();
        ws.write("f.yaml", &spec(V1));
        let (_, total) = faulted(&ws, &shim, op, 0, &["run", "-q", "-j", "1", "f.yaml"]);
        assert!(total > 0, "the shim saw no {op} call: is it loaded?");
        for at in 1..=total {
            let ws = Workspace::new();
            ws.write("f.yaml", &spec(V1));
            let (killed, _) = faulted(&ws, &shim, op, at, &["run", "-q", "-j", "1", "f.yaml"]);
            assert!(killed, "run: {op} #{at} of {total} was not reached");
            points += 1;
            damaged_after_kill += damaged(&ws);
            if let Err(why) = recovery(&ws, &lock_v1, V1) {
                wrong += 1;
                failures.push(format!("run killed at {op} #{at}: {why}"));
            }
        }
        report.push(format!("{op} {total}"));
    }
    eprintln!(
        "fault sweep, hone run: {points} kill points ({}); damaged objects after a kill: {damaged_after_kill}; \
         recoveries that were wrong (failed, another lock, wrong output, leftovers): {wrong}",
        report.join(", ")
    );

    // `hone gc` removing v1's results (a directory object among them), killed at each
    // point; then v2 must still be whole, and going back to v1 must recompute it rightly.
    let setup = || {
        let ws = Workspace::new();
        ws.write("f.yaml", &spec(V1));
        ws.ok(&["run", "-q", "-j", "1", "f.yaml"]);
        ws.write("f.yaml", &spec(V2));
        ws.ok(&["run", "-q", "-j", "1", "f.yaml"]);
        ws
    };
    let mut report = Vec::new();
    let (mut gc_points, mut gc_damaged, mut gc_wrong) = (0, 0, 0);
    for op in OPS {
        let (_, total) = faulted(&setup(), &shim, op, 0, &["gc"]);
        for at in 1..=total {
            let ws = setup();
            let (killed, _) = faulted(&ws, &shim, op, at, &["gc"]);
            assert!(killed, "gc: {op} #{at} of {total} was not reached");
            gc_points += 1;
            gc_damaged += damaged(&ws);
            let status = ws.hone(&["status", "f.yaml"]).stdout;
            let result = if status.contains("4 up to date") {
                recovery(&ws, &lock_v2, V2).and_then(|()| {
                    ws.write("f.yaml", &spec(V1));
                    recovery(&ws, &lock_v1, V1).map_err(|why| format!("back to v1: {why}"))
                })
            } else {
                Err(format!("gc lost results the lock references:\n{status}"))
            };
            if let Err(why) = result {
                gc_wrong += 1;
                failures.push(format!("gc killed at {op} #{at}: {why}"));
            }
        }
        report.push(format!("{op} {total}"));
    }
    eprintln!(
        "fault sweep, hone gc: {gc_points} kill points ({}); damaged objects after a kill: {gc_damaged}; \
         recoveries that were wrong (lost results, a reused half-deleted object, another lock): {gc_wrong}",
        report.join(", ")
    );
    assert!(gc_points > 0, "gc made no calls the shim could see");
    assert_eq!(
        damaged_after_kill + gc_damaged,
        0,
        "a kill left a damaged object"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
