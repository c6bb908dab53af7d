//! `hone run`, `status`, `show`, `gc`, `verify` on real command pipelines: what re-runs
//! after which change, failures, targets, the lock file, concurrency.

use crate::support::{Workspace, chain};

fn run_json(ws: &Workspace, extra: &[&str]) -> crate::support::Output {
    let mut args = vec!["run", "p.yaml", "--json"];
    args.extend_from_slice(extra);
    ws.hone(&args)
}

#[test]
fn a_param_edit_reruns_exactly_that_stage_and_its_descendants() {
    let ws = Workspace::new();
    ws.write("p.yaml", &chain(7, &[]));
    let first = run_json(&ws, &[]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(first.with_status("ran").len(), 7);
    let again = run_json(&ws, &[]);
    assert_eq!(again.with_status("cached").len(), 7, "{}", again.stdout);

    ws.write("p.yaml", &chain(7, &[(3, "changed")]));
    let status = ws.ok(&["status", "p.yaml"]).stdout;
    assert!(status.contains("stale s3  param `cmd` changed"), "{status}");
    assert!(
        status.contains("\"echo ${params.tag3}") || status.contains("echo 3 >>"),
        "{status}"
    );
    assert!(
        status.contains("stale s4  upstream `s3` is stale"),
        "{status}"
    );
    assert!(status.contains("ok    s2"), "{status}");
    let edited = run_json(&ws, &[]);
    assert_eq!(edited.with_status("cached"), ["s0", "s1", "s2"]);
    assert_eq!(edited.with_status("ran"), ["s3", "s4", "s5", "s6"]);
}

/// The cache key holds the parameters as the kind resolved them, defaults filled in:
/// writing a default out changes nothing, and the lock says what was computed.
#[test]
fn writing_a_default_out_is_the_same_stage() {
    let ws = Workspace::new();
    let spec = |extra: &str| {
        format!(
            "name: p\nstages:\n  a:\n    kind: command\n    with:\n      cmd: \"echo hi > ${{outputs.o}}\"\n      outputs: {{o: files}}\n{extra}"
        )
    };
    ws.write("p.yaml", &spec(""));
    ws.ok(&["run", "p.yaml", "-q"]);
    let lock = ws.read("p.lock");
    assert!(
        lock.contains("shell: sh"),
        "the lock holds the defaults: {lock}"
    );
    ws.write("p.yaml", &spec("      shell: sh\n      env: {}\n"));
    let status = ws.hone(&["status", "p.yaml"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert!(status.stdout.contains("ok    a"), "{}", status.stdout);
    let out = run_json(&ws, &[]);
    assert_eq!(out.with_status("cached"), ["a"], "{}", out.stdout);
    assert_eq!(ws.read("p.lock"), lock);
    // A value other than the default is another stage.
    ws.write("p.yaml", &spec("      shell: bash\n"));
    let status = ws.ok(&["status", "p.yaml"]).stdout;
    assert!(status.contains("param `shell` changed"), "{status}");
}

#[test]
fn comments_and_formatting_change_nothing() {
    let ws = Workspace::new();
    let spec = chain(7, &[]);
    ws.write("p.yaml", &spec);
    ws.ok(&["run", "p.yaml", "-q"]);
    let lock = ws.read("p.lock");
    // Comments, blank lines, flow style and key order are not part of any fingerprint.
    let reformatted = spec
        .replace("stages:\n", "# the stages\nstages:\n\n")
        .replace("    kind: command\n", "    kind: command   # a comment\n")
        .replace(
            "      outputs: { out: files }\n",
            "      outputs:\n        out: files\n",
        );
    assert_ne!(reformatted, spec);
    ws.write("p.yaml", &reformatted);
    let out = run_json(&ws, &[]);
    assert_eq!(out.with_status("cached").len(), 7, "{}", out.stdout);
    assert_eq!(ws.read("p.lock"), lock);
}

#[test]
fn identical_output_stops_the_cascade() {
    let ws = Workspace::new();
    let spec = chain(4, &[]);
    ws.write("p.yaml", &spec);
    ws.ok(&["run", "p.yaml", "-q"]);
    // s1's command changes but writes the same bytes: it re-runs, its descendants do not.
    ws.write(
        "p.yaml",
        &spec.replace(
            "cat ${inputs.prev} > ${outputs.out} && echo ${params.tag1}",
            "cat ${inputs.prev} > ${outputs.out} && echo  ${params.tag1}",
        ),
    );
    let out = run_json(&ws, &[]);
    assert_eq!(out.with_status("ran"), ["s1"], "{}", out.stdout);
    assert_eq!(out.with_status("cached"), ["s0", "s2", "s3"]);
}

#[test]
fn same_spec_and_seed_give_identical_lock_files() {
    let a = Workspace::new();
    let b = Workspace::new();
    let spec = chain(5, &[]).replace("echo ${params.tag0}", "echo $HONE_SEED ${params.tag0}");
    for ws in [&a, &b] {
        ws.write("p.yaml", &spec);
        ws.ok(&["run", "p.yaml", "-q"]);
    }
    assert_eq!(a.read("p.lock"), b.read("p.lock"));
    // A different pipeline seed changes the derived stage seeds, hence the lock.
    b.ok(&["run", "p.yaml", "-q", "-S", "seed=2"]);
    assert_ne!(a.read("p.lock"), b.read("p.lock"));
}

#[test]
fn file_dependencies_are_hashed_by_content() {
    let ws = Workspace::new();
    ws.write("data/in.txt", "one\n");
    ws.write(
        "p.yaml",
        "name: deps\nstages:\n  copy:\n    kind: command\n    with: { cmd: \"cp data/in.txt ${outputs.out}\", deps: [data], outputs: { out: files } }\n",
    );
    assert_eq!(run_json(&ws, &[]).with_status("ran"), ["copy"]);
    // Touching without changing content is not a change.
    let f = std::fs::File::options()
        .write(true)
        .open(ws.path("data/in.txt"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now()).unwrap();
    assert_eq!(run_json(&ws, &[]).with_status("cached"), ["copy"]);
    ws.write("data/in.txt", "two\n");
    let status = ws.ok(&["status", "p.yaml"]).stdout;
    assert!(status.contains("file `data` changed"), "{status}");
    assert_eq!(run_json(&ws, &[]).with_status("ran"), ["copy"]);
    // A missing dependency is bad input: exit 2 before anything runs.
    std::fs::remove_dir_all(ws.path("data")).unwrap();
    let out = ws.hone(&["run", "p.yaml"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("depends on `data`, which does not exist"),
        "{}",
        out.stderr
    );
}

fn diamond(fail_left: bool) -> String {
    format!(
        r#"name: diamond
stages:
  root: {{ kind: command, with: {{ cmd: "echo r > ${{outputs.o}}", outputs: {{ o: files }} }} }}
  left: {{ kind: command, inputs: {{ i: root.o }}, with: {{ cmd: "{}", outputs: {{ o: files }} }} }}
  right: {{ kind: command, inputs: {{ i: root.o }}, with: {{ cmd: "cp ${{inputs.i}} ${{outputs.o}}", outputs: {{ o: files }} }} }}
  join: {{ kind: command, inputs: {{ a: left.o, b: right.o }}, with: {{ cmd: "cat ${{inputs.a}} ${{inputs.b}} > ${{outputs.o}}", outputs: {{ o: files }} }} }}
"#,
        if fail_left {
            "echo boom >&2; exit 3"
        } else {
            "cp ${inputs.i} ${outputs.o}"
        }
    )
}

#[test]
fn a_failure_exits_1_and_keep_going_runs_the_independent_branch() {
    let ws = Workspace::new();
    ws.write("p.yaml", &diamond(true));
    let out = run_json(&ws, &["--jobs", "1"]);
    assert_eq!(out.code, 1);
    let st = out.statuses();
    assert_eq!(st["root"], "ran");
    assert_eq!(st["left"], "failed");
    assert_eq!(st["join"], "skipped");
    // Without --keep-going the run stops: `right` (after `left` in the spec) never starts.
    assert_eq!(st["right"], "skipped");
    let text = ws.hone(&["run", "p.yaml", "--keep-going", "--jobs", "1"]);
    assert_eq!(text.code, 1);
    assert!(
        text.stdout
            .contains("command exited with status 3; last lines of its output:\n        | boom"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("upstream `left` failed"),
        "{}",
        text.stdout
    );
    let st = run_json(&ws, &["--keep-going"]).statuses();
    assert_eq!(
        (
            st["root"].as_str(),
            st["right"].as_str(),
            st["left"].as_str(),
            st["join"].as_str()
        ),
        ("cached", "cached", "failed", "skipped")
    );
    assert!(ws.read(".hone/logs/left.log").contains("boom"));
    ws.write("p.yaml", &diamond(false));
    let st = run_json(&ws, &[]).statuses();
    assert_eq!((st["left"].as_str(), st["join"].as_str()), ("ran", "ran"));
}

#[test]
fn targets_downstream_and_force() {
    let ws = Workspace::new();
    ws.write("p.yaml", &chain(4, &[]));
    assert_eq!(run_json(&ws, &["s1"]).with_status("ran"), ["s0", "s1"]);
    let out = run_json(&ws, &["s2", "--downstream"]);
    assert_eq!(out.with_status("cached"), ["s0", "s1"]);
    assert_eq!(out.with_status("ran"), ["s2", "s3"]);
    let forced = run_json(&ws, &["--force", "s1"]);
    assert_eq!(
        forced.with_status("ran"),
        ["s1"],
        "s1 re-runs but writes the same bytes"
    );
    assert_eq!(run_json(&ws, &["--force-all"]).with_status("ran").len(), 4);
}

#[test]
fn frozen_fails_when_the_lock_would_change() {
    let ws = Workspace::new();
    ws.write("p.yaml", &chain(3, &[]));
    ws.ok(&["run", "p.yaml", "-q"]);
    ws.ok(&["run", "p.yaml", "--frozen", "-q"]);
    // From a clean store, a frozen run reproduces the locked digests.
    std::fs::remove_dir_all(ws.path(".hone")).unwrap();
    let out = run_json(&ws, &["--frozen"]);
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert_eq!(out.with_status("ran").len(), 3);
    let lock = ws.read("p.lock");
    ws.write("p.yaml", &chain(3, &[(1, "new")]));
    let out = ws.hone(&["run", "p.yaml", "--frozen"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout
            .contains("--frozen: stage `s1` would change: param `cmd` changed"),
        "{}",
        out.stdout
    );
    assert_eq!(
        ws.read("p.lock"),
        lock,
        "a frozen run never writes the lock"
    );
    // A non-deterministic stage reproduces its fingerprint but not its bytes.
    ws.write("p.yaml", "name: nd\nstages:\n  t: { kind: command, with: { cmd: \"date +%N > ${outputs.o}\", outputs: { o: files } } }\n");
    ws.ok(&["run", "p.yaml", "-q"]);
    std::fs::remove_dir_all(ws.path(".hone")).unwrap();
    let out = ws.hone(&["run", "p.yaml", "--frozen"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout
            .contains("stage `t` produced different outputs than the lock records"),
        "{}",
        out.stdout
    );
}

#[test]
fn status_explains_never_run_missing_and_input_changes() {
    let ws = Workspace::new();
    ws.write("p.yaml", &chain(2, &[]));
    let status = ws.ok(&["status", "p.yaml"]).stdout;
    assert!(status.contains("stale s0  never run"), "{status}");
    ws.ok(&["run", "p.yaml", "-q"]);
    assert!(
        ws.ok(&["status", "p.yaml"])
            .stdout
            .contains("2 up to date, 0 stale")
    );
    std::fs::remove_dir_all(ws.path(".hone")).unwrap();
    let status = ws.ok(&["status", "p.yaml"]).stdout;
    assert!(status.contains("outputs are not in the store"), "{status}");
    let json: serde_json::Value =
        serde_json::from_str(&ws.ok(&["status", "p.yaml", "--json"]).stdout).unwrap();
    assert_eq!(json["stages"][0]["up_to_date"], false);
}

#[test]
fn show_points_at_the_stored_artifact() {
    let ws = Workspace::new();
    ws.write("p.yaml", &chain(2, &[]));
    let out = ws.hone(&["show", "p.yaml", "s1"]);
    assert_eq!(out.code, 1, "nothing stored yet: {}", out.stderr);
    ws.ok(&["run", "p.yaml", "-q"]);
    let text = ws.ok(&["show", "p.yaml", "s1"]).stdout;
    assert!(
        text.contains("s1.out") && text.contains("type    files") && text.contains("text, 2 lines"),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ws.ok(&["show", "p.yaml", "s1.out", "--json"]).stdout).unwrap();
    let path = json["outputs"][0]["path"].as_str().unwrap();
    assert_eq!(ws.read(path), "0\n1\n");
    assert_eq!(json["outputs"][0]["digest"].as_str().unwrap().len(), 64);
    assert_eq!(ws.hone(&["show", "p.yaml", "s1.nope"]).code, 2);
}

#[test]
fn gc_keeps_what_the_lock_references() {
    let ws = Workspace::new();
    ws.write("p.yaml", &chain(3, &[]));
    ws.ok(&["run", "p.yaml", "-q"]);
    ws.write("p.yaml", &chain(3, &[(2, "other")]));
    ws.ok(&["run", "p.yaml", "-q"]);
    let dry = ws.ok(&["gc", "--dry-run"]).stdout;
    assert!(
        dry.contains("would remove 1 object") && dry.contains("1 run record"),
        "{dry}"
    );
    let out = ws.ok(&["gc"]).stdout;
    assert!(out.contains("removed 1 object"), "{out}");
    assert_eq!(run_json(&ws, &[]).with_status("cached").len(), 3);
    assert!(ws.ok(&["verify"]).stdout.contains("all intact"));
}

#[test]
fn verify_finds_corruption_and_fix_lets_the_next_run_recompute() {
    let ws = Workspace::new();
    ws.write("p.yaml", &chain(2, &[]));
    ws.ok(&["run", "p.yaml", "-q"]);
    let json: serde_json::Value =
        serde_json::from_str(&ws.ok(&["show", "p.yaml", "s0", "--json"]).stdout).unwrap();
    let path = ws.path(json["outputs"][0]["path"].as_str().unwrap());
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&path, perms).unwrap();
    std::fs::write(&path, "tampered\n").unwrap();
    let out = ws.hone(&["verify"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.contains("is corrupt")
            && out
                .stdout
                .contains("stage `s0` output `out` uses corrupt object"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("stage `s1` (run ")
            && out.stdout.contains("was computed from damaged object"),
        "{}",
        out.stdout
    );
    let lock = ws.read("p.lock");
    ws.ok(&["verify", "--fix"]);
    // s1 read the damaged object (it may have been damaged before s1 ran), so it is
    // recomputed too; both reproduce their bytes.
    let rerun = run_json(&ws, &[]);
    assert_eq!(rerun.with_status("ran"), ["s0", "s1"]);
    assert_eq!(ws.read("p.lock"), lock);
    assert!(ws.ok(&["verify"]).stdout.contains("all intact"));
}

#[test]
fn a_corrupt_lock_file_is_bad_input() {
    let ws = Workspace::new();
    ws.write("p.yaml", &chain(2, &[]));
    ws.write("p.lock", "# hone lock file\nversion: 1\npipeline: [oops\n");
    let out = ws.hone(&["run", "p.yaml"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("the lock file `p.lock` is not valid"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_second_run_on_a_busy_workspace_fails_clearly_or_waits() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        "name: busy\nstages:\n  slow: { kind: command, with: { cmd: \"touch started; while [ ! -e release ]; do sleep 0.01; done; echo > ${outputs.o}\", outputs: { o: files } } }\n",
    );
    let mut first = ws.spawn(&["run", "p.yaml", "-q"]);
    ws.wait_for("started");
    let second = ws.hone(&["run", "p.yaml"]);
    assert_eq!(second.code, 1);
    assert!(
        second.stderr.contains("is in use by another hone run (pid")
            && second.stderr.contains("hone run p.yaml"),
        "{}",
        second.stderr
    );
    let waiting = ws.spawn(&["run", "p.yaml", "--wait", "--json"]);
    std::fs::write(ws.path("release"), "").unwrap();
    assert!(first.wait().unwrap().success());
    let out = waiting.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"status\": \"cached\""));
}

#[test]
fn independent_stages_run_in_parallel_within_jobs() {
    // Each stage waits for the other to have started: this finishes only if both run at once.
    let ws = Workspace::new();
    let wait = |me: &str, other: &str| {
        format!(
            "touch {me}; i=0; while [ ! -e {other} ]; do i=$((i+1)); [ $i -gt 2000 ] && exit 9; sleep 0.01; done; echo > ${{outputs.o}}"
        )
    };
    ws.write(
        "p.yaml",
        &format!(
            "name: par\nstages:\n  a: {{ kind: command, with: {{ cmd: \"{}\", outputs: {{ o: files }} }} }}\n  b: {{ kind: command, with: {{ cmd: \"{}\", outputs: {{ o: files }} }} }}\n",
            wait("a.on", "b.on"),
            wait("b.on", "a.on")
        ),
    );
    let out = run_json(&ws, &["--jobs", "2"]);
    assert_eq!(out.with_status("ran"), ["a", "b"], "{}", out.stdout);
}

#[test]
fn thread_hints_keep_heavy_stages_apart() {
    // Two stages of 2 threads each under --jobs 2 must not overlap.
    let ws = Workspace::new();
    let guard = |me: &str, other: &str| {
        format!(
            "touch {me}.on; sleep 0.2; [ -e {other}.on ] && exit 7; rm {me}.on; echo > ${{outputs.o}}"
        )
    };
    ws.write(
        "p.yaml",
        &format!(
            "name: threads\nstages:\n  a: {{ kind: command, threads: 2, with: {{ cmd: \"{}\", outputs: {{ o: files }} }} }}\n  b: {{ kind: command, threads: 2, with: {{ cmd: \"{}\", outputs: {{ o: files }} }} }}\n",
            guard("a", "b"),
            guard("b", "a")
        ),
    );
    let out = run_json(&ws, &["--jobs", "2"]);
    assert_eq!(out.with_status("ran"), ["a", "b"], "{}", out.stdout);
}

#[test]
fn a_missing_declared_output_fails_the_stage() {
    let ws = Workspace::new();
    ws.write("p.yaml", "name: m\nstages:\n  a: { kind: command, with: { cmd: \"true\", outputs: { model: causal-lm } } }\n");
    let out = ws.hone(&["run", "p.yaml"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout
            .contains("did not write its declared output `model`"),
        "{}",
        out.stdout
    );
}

#[test]
fn directory_outputs_are_stored_whole() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        "name: d\nstages:\n  m: { kind: command, with: { cmd: \"mkdir -p ${outputs.model}/sub && echo w > ${outputs.model}/sub/weights && echo '{}' > ${outputs.model}/config.json\", outputs: { model: causal-lm } } }\n  use: { kind: command, inputs: { m: m.model }, with: { cmd: \"cat ${inputs.m}/sub/weights > ${outputs.o}\", input_types: { m: causal-lm }, outputs: { o: files } } }\n",
    );
    ws.ok(&["run", "p.yaml", "-q"]);
    let text = ws.ok(&["show", "p.yaml", "m"]).stdout;
    assert!(text.contains("directory: config.json, sub"), "{text}");
    assert!(ws.ok(&["verify"]).stdout.contains("all intact"));
}

#[test]
fn the_process_executor_matches_the_thread_executor() {
    let threads = Workspace::new();
    let processes = Workspace::new();
    for ws in [&threads, &processes] {
        ws.write("p.yaml", &diamond(false));
    }
    threads.ok(&["run", "p.yaml", "-q"]);
    let out = processes.hone(&["run", "p.yaml", "--json", "--executor", "process"]);
    assert_eq!(
        out.with_status("ran").len(),
        4,
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(threads.read("p.lock"), processes.read("p.lock"));
    // `exec-stage` alone: refuses a stage whose inputs are not stored, runs one that has them.
    let fresh = Workspace::new();
    fresh.write("p.yaml", &diamond(false));
    let refused = fresh.hone(&["exec-stage", "p.yaml", "left"]);
    assert_eq!(refused.code, 2);
    assert!(
        refused.stderr.contains("needs `root` stored first"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        fresh.ok(&["exec-stage", "p.yaml", "root"]).stdout,
        "root ran\n"
    );
    assert_eq!(
        fresh.ok(&["exec-stage", "p.yaml", "left"]).stdout,
        "left ran\n"
    );
    // A failure inside the child process reaches the scheduler's report.
    processes.write("p.yaml", &diamond(true));
    let failed = processes.hone(&["run", "p.yaml", "--executor", "process"]);
    assert_eq!(failed.code, 1);
    assert!(
        failed.stdout.contains("exited with status 3"),
        "{}",
        failed.stdout
    );
}

/// `${params.X:q}` puts a value into a command as one shell word, whatever it holds.
#[test]
fn a_quoted_param_reaches_the_command_intact() {
    let ws = Workspace::new();
    ws.write(
        "q.yaml",
        "name: q\nparams:\n  who: \"O'Brien & $(sons)\"\nstages:\n  a: {kind: command, with: {cmd: \"printf '%s' ${params.who:q} > ${outputs.o}\", outputs: {o: files}}}\n",
    );
    ws.ok(&["run", "-q", "q.yaml"]);
    let show = ws.ok(&["show", "q.yaml", "a.o"]).stdout;
    let path = show
        .lines()
        .find_map(|l| l.trim().strip_prefix("path "))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(ws.read(&path), "O'Brien & $(sons)");
}

/// Writing to a pipe that closed early (`hone run | head -1`) ends quietly, exit 0.
#[test]
#[cfg(unix)]
fn a_closed_stdout_is_not_a_crash() {
    let ws = Workspace::new();
    ws.write("p.yaml", &chain(3, &[]));
    for args in [
        &["run", "p.yaml"][..],
        &["run", "p.yaml", "--json"],
        &["plan", "p.yaml"],
    ] {
        let mut child = ws
            .command(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}

/// `hone status --exit-code` is a CI check: 1 while anything is stale, 0 once all is
/// up to date; without the flag status always exits 0.
#[test]
fn status_exit_code_says_whether_anything_is_stale() {
    let ws = Workspace::new();
    ws.write("p.yaml", &chain(2, &[]));
    assert_eq!(ws.hone(&["status", "p.yaml"]).code, 0);
    assert_eq!(ws.hone(&["status", "--exit-code", "p.yaml"]).code, 1);
    assert_eq!(
        ws.hone(&["status", "--exit-code", "--json", "p.yaml"]).code,
        1
    );
    ws.ok(&["run", "-q", "p.yaml"]);
    assert_eq!(ws.hone(&["status", "--exit-code", "p.yaml"]).code, 0);
    ws.write("p.yaml", &chain(2, &[(1, "changed")]));
    assert_eq!(ws.hone(&["status", "--exit-code", "p.yaml"]).code, 1);
}

/// `hone completions SHELL` writes a script the shell accepts, naming the subcommands.
#[test]
fn completions_are_generated_for_each_shell() {
    let ws = Workspace::new();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = ws.ok(&["completions", shell]);
        assert!(
            out.stdout.contains("status") && out.stdout.contains("exec-stage"),
            "{shell}: {}",
            &out.stdout[..out.stdout.len().min(400)]
        );
    }
    let bash = ws.ok(&["completions", "bash"]).stdout;
    ws.write("hone.bash", &bash);
    // bash parses it (syntax check only; -n runs nothing).
    if let Ok(check) = std::process::Command::new("bash")
        .args(["-n", "hone.bash"])
        .current_dir(ws.root())
        .status()
    {
        assert!(check.success());
    }
    assert_eq!(ws.hone(&["completions", "tcsh"]).code, 2);
}
