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

/// Whether a process is gone (or a zombie nobody reaped yet: in a container PID 1 may
/// not reap orphans).
#[cfg(target_os = "linux")]
fn dead(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

/// A command's own children (a background job here) die with hone, even when hone gets
/// SIGKILL and can clean nothing up.
#[test]
#[cfg(target_os = "linux")]
fn sigkill_of_hone_kills_a_commands_whole_process_tree() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        "name: tree\nstages:\n  a: {kind: command, with: {cmd: \"sleep 300 & echo $! > bg.pid; sleep 300 & echo $! > fg.pid; touch started; wait\", outputs: {o: files}}}\n",
    );
    let mut child = ws.spawn(&["run", "p.yaml", "-q"]);
    ws.wait_for("started");
    let (bg, fg) = (ws.read("bg.pid"), ws.read("fg.pid"));
    let (bg, fg) = (bg.trim(), fg.trim());
    assert!(!dead(bg) && !dead(fg));
    signal(&child, 9);
    child.wait().unwrap();
    for _ in 0..200 {
        if dead(bg) && dead(fg) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(dead(bg) && dead(fg), "the command's children outlived hone");
}

/// The same tree is stopped as a whole when the stage is interrupted, and a command that
/// fails still reports its exit status through the guardian.
#[test]
#[cfg(target_os = "linux")]
fn a_commands_exit_status_and_signal_reach_hone() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        "name: st\nstages:\n  a: {kind: command, with: {cmd: \"echo oops >&2; exit 3\", outputs: {o: files}}}\n  b: {kind: command, with: {cmd: \"kill -9 $$\", outputs: {o: files}}}\n",
    );
    let out = ws.hone(&["run", "p.yaml", "-k"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.contains("exited with status 3") && out.stdout.contains("oops"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("was killed by a signal"),
        "{}",
        out.stdout
    );
}

/// On a full disk (a 256 KiB tmpfs) a stage fails with the command's own "No space left
/// on device", although its log could not be written, and the store stays valid. Needs
/// permission to mount a tmpfs (root, as in CI); skipped with a message otherwise.
#[test]
#[cfg(target_os = "linux")]
fn a_full_disk_fails_the_stage_with_the_commands_message_and_keeps_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(dir.path())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    }
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(dir.path());
    std::fs::write(
        dir.path().join("c.yaml"),
        "name: c\nstages:\n  a: {kind: command, with: {cmd: \"head -c 100000 /dev/zero > ${outputs.o}\", outputs: {o: files}}}\n  b: {kind: command, inputs: {i: a.o}, with: {cmd: \"cat ${inputs.i} ${inputs.i} ${inputs.i} > ${outputs.o}\", outputs: {o: files}}}\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(crate::support::hone_bin())
            .args(args)
            .current_dir(dir.path())
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    let out = run(&["run", "c.yaml"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("No space left on device"), "{stdout}");
    let verify = run(&["verify"]);
    assert!(
        String::from_utf8_lossy(&verify.stdout).contains("all intact"),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    // `a` finished and stays finished.
    let again = run(&["run", "--json", "c.yaml", "a"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("\"cached\""));
}
