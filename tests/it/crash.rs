//! Crash safety: SIGKILL and Ctrl-C in the middle of a stage leave a valid store, and the
//! next run executes only the unfinished stages.

use std::time::Duration;

use crate::support::Workspace;

/// a -> b -> c; `b` announces itself and then blocks until `release` exists.
fn spec() -> &'static str {
    r#"name: crash
stages:
  a: { kind: command, with: { cmd: "echo a > ${outputs.o}", outputs: { o: files } } }
  b:
    kind: command
    inputs: { i: a.o }
    with:
      cmd: "mkdir -p ${outputs.o}; cp ${inputs.i} ${outputs.o}/part1; touch b.started; while [ ! -e release ]; do sleep 0.01; done; echo b > ${outputs.o}/part2"
      outputs: { o: files }
  c: { kind: command, inputs: { i: b.o }, with: { cmd: "cat ${inputs.i}/part1 ${inputs.i}/part2 > ${outputs.o}", outputs: { o: files } } }
"#
}

fn statuses(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap()
}

#[cfg(unix)]
fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc_kill(child.id() as i32, sig) };
}

#[cfg(unix)]
unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
#[cfg(unix)]
fn sigkill_during_a_stage_loses_only_that_stage() {
    let ws = Workspace::new();
    ws.write("p.yaml", spec());
    let mut child = ws.spawn(&["run", "p.yaml", "-q"]);
    ws.wait_for("b.started");
    signal(&child, 9);
    child.wait().unwrap();
    // The stage's command dies with hone (PR_SET_PDEATHSIG); give the kernel a moment.
    std::thread::sleep(Duration::from_millis(100));
    let verify = ws.ok(&["verify"]);
    assert!(verify.stdout.contains("all intact"), "{}", verify.stdout);
    std::fs::remove_file(ws.path("b.started")).unwrap();
    std::fs::write(ws.path("release"), "").unwrap();
    let out = ws.command(&["run", "p.yaml", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = statuses(&out);
    let st: Vec<(&str, &str)> = v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(st, [("a", "cached"), ("b", "ran"), ("c", "ran")]);
    assert!(ws.ok(&["verify"]).stdout.contains("all intact"));
    assert!(
        std::fs::read_dir(ws.path(".hone/tmp"))
            .unwrap()
            .next()
            .is_none(),
        "no leftovers in .hone/tmp"
    );
}

#[test]
#[cfg(unix)]
fn ctrl_c_stops_cleanly_and_keeps_finished_stages() {
    let ws = Workspace::new();
    ws.write("p.yaml", spec());
    let child = ws.spawn(&["run", "p.yaml", "--json"]);
    ws.wait_for("b.started");
    signal(&child, 2);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = statuses(&out);
    let st: Vec<(&str, &str)> = v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(st, [("a", "ran"), ("b", "interrupted"), ("c", "skipped")]);
    assert!(
        ws.read("p.lock").contains("\n  a:\n"),
        "finished stages are in the lock"
    );
    std::fs::write(ws.path("release"), "").unwrap();
    let out = ws.command(&["run", "p.yaml", "--json"]).output().unwrap();
    let v = statuses(&out);
    assert_eq!(v["stages"][0]["status"], "cached");
    assert_eq!(v["stages"][1]["status"], "ran");
}
