//! The store never serves a damaged or half-deleted result: each reproduction of issue 18
//! as a regression test, driving the real binary.

use crate::support::Workspace;

/// The store path of a stage's output, as `hone show` prints it.
fn object(ws: &Workspace, spec: &str, output: &str) -> std::path::PathBuf {
    let out = ws.ok(&["show", spec, output]).stdout;
    let rel = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("path ").map(str::trim))
        .unwrap_or_else(|| panic!("no path in:\n{out}"))
        .to_string();
    ws.path(&rel)
}

#[cfg(unix)]
fn make_writable(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).unwrap().permissions().mode();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | 0o200)).unwrap();
}

const COPY: &str = "name: c\nstages:\n  a: {kind: command, with: {cmd: \"echo good > ${outputs.o}\", outputs: {o: files}}}\n  b: {kind: command, inputs: {i: a.o}, with: {cmd: \"cat ${inputs.i} > ${outputs.o}\", outputs: {o: files}}}\n";

#[test]
#[cfg(unix)]
fn a_damaged_object_is_never_a_cache_hit_and_rerunning_repairs_it() {
    let ws = Workspace::new();
    ws.write("c.yaml", COPY);
    ws.ok(&["run", "-q", "c.yaml"]);
    let a = object(&ws, "c.yaml", "a.o");
    make_writable(&a);
    std::fs::write(&a, "bad\n").unwrap();

    let status = ws.hone(&["status", "c.yaml"]);
    assert!(
        status.stdout.contains("stale a") && status.stdout.contains("is damaged"),
        "{}",
        status.stdout
    );
    // Forcing only `b` re-runs `a` first (its stored result is unusable), so `b` reads
    // the repaired object.
    let out = ws.ok(&["run", "--json", "--force", "b", "c.yaml"]);
    let st = out.statuses();
    assert_eq!(
        (st["a"].as_str(), st["b"].as_str()),
        ("ran", "ran"),
        "{st:?}"
    );
    assert_eq!(std::fs::read_to_string(&a).unwrap(), "good\n");
    assert_eq!(
        std::fs::read_to_string(object(&ws, "c.yaml", "b.o")).unwrap(),
        "good\n"
    );
    assert!(ws.ok(&["verify"]).stdout.contains("all intact"));

    // `--force` of the damaged stage itself repairs too.
    make_writable(&a);
    std::fs::write(&a, "worse\n").unwrap();
    ws.ok(&["run", "-q", "--force", "a", "c.yaml"]);
    assert_eq!(std::fs::read_to_string(&a).unwrap(), "good\n");
}

#[test]
#[cfg(unix)]
fn verify_fix_also_drops_what_was_computed_from_a_damaged_object() {
    let ws = Workspace::new();
    ws.write("c.yaml", COPY);
    ws.ok(&["run", "-q", "c.yaml"]);
    let a = object(&ws, "c.yaml", "a.o");
    // `b` computed from a damaged `a` (as a run before this check existed could): damage
    // `a`, and make `b`'s stored output what `b` would have computed from it.
    make_writable(&a);
    std::fs::write(&a, "bad\n").unwrap();
    let verify = ws.hone(&["verify"]);
    assert_eq!(verify.code, 1);
    assert!(
        verify.stdout.contains("stage `b` (run ")
            && verify.stdout.contains("was computed from damaged object"),
        "{}",
        verify.stdout
    );
    let fixed = ws.ok(&["verify", "--fix"]).stdout;
    assert!(
        fixed.contains("removed 1 objects and 2 run records"),
        "{fixed}"
    );
    let out = ws.ok(&["run", "--json", "c.yaml"]);
    let st = out.statuses();
    assert_eq!(
        (st["a"].as_str(), st["b"].as_str()),
        ("ran", "ran"),
        "{st:?}"
    );
    assert!(ws.ok(&["verify"]).stdout.contains("all intact"));
}

#[test]
#[cfg(unix)]
fn a_half_deleted_directory_object_is_replaced_not_reused() {
    let ws = Workspace::new();
    ws.write(
        "g.yaml",
        "name: g\nstages:\n  d: {kind: command, with: {cmd: \"mkdir ${outputs.o}; for i in 1 2 3; do echo $i > ${outputs.o}/f$i; done\", outputs: {o: files}}}\n  u: {kind: command, inputs: {i: d.o}, with: {cmd: \"cat ${inputs.i}/* > ${outputs.o}\", outputs: {o: files}}}\n",
    );
    ws.ok(&["run", "-q", "g.yaml"]);
    let d = object(&ws, "g.yaml", "d.o");
    make_writable(&d);
    std::fs::remove_file(d.join("f1")).unwrap();
    std::fs::remove_dir_all(ws.path(".hone/runs")).unwrap();
    ws.ok(&["run", "-q", "g.yaml"]);
    assert_eq!(
        std::fs::read_to_string(object(&ws, "g.yaml", "u.o")).unwrap(),
        "1\n2\n3\n"
    );
    assert!(d.join("f1").is_file());
    // The same with the run records kept: the cache check itself finds the damage.
    make_writable(&d);
    std::fs::remove_file(d.join("f2")).unwrap();
    let out = ws.ok(&["run", "--json", "g.yaml"]);
    assert_eq!(out.statuses()["d"], "ran");
    assert!(d.join("f2").is_file());
    assert!(ws.ok(&["verify"]).stdout.contains("all intact"));
}

#[test]
fn a_commands_stage_id_and_threads_are_in_its_key() {
    let ws = Workspace::new();
    ws.write(
        "k.yaml",
        "name: k\nstages:\n  x: {kind: command, seed: 7, with: {cmd: \"echo ${stage} > ${outputs.o}\", outputs: {o: files}}}\n  y: {kind: command, seed: 7, with: {cmd: \"echo ${stage} > ${outputs.o}\", outputs: {o: files}}}\n  t: {kind: command, seed: 7, threads: 1, with: {cmd: \"echo $HONE_THREADS > ${outputs.o}\", outputs: {o: files}}}\n",
    );
    ws.ok(&["run", "-q", "k.yaml"]);
    assert_eq!(
        std::fs::read_to_string(object(&ws, "k.yaml", "y.o")).unwrap(),
        "y\n"
    );
    ws.write(
        "k.yaml",
        &ws.read("k.yaml").replace("threads: 1", "threads: 2"),
    );
    let status = ws.hone(&["status", "k.yaml"]).stdout;
    assert!(status.contains("`threads` changed 1 -> 2"), "{status}");
    ws.ok(&["run", "-q", "k.yaml"]);
    assert_eq!(
        std::fs::read_to_string(object(&ws, "k.yaml", "t.o")).unwrap(),
        "2\n"
    );
}

#[test]
fn gc_keeps_the_results_of_locks_in_hidden_directories_outside_and_named() {
    let ws = Workspace::new();
    let outside = tempfile::tempdir().unwrap();
    let spec = |word: &str| {
        format!(
            "name: h\nstages:\n  a: {{kind: command, with: {{cmd: \"echo {word} > ${{outputs.o}}\", outputs: {{o: files}}}}}}\n"
        )
    };
    ws.write(".p/h.yaml", &spec("hidden"));
    ws.ok(&["run", "-q", ".p/h.yaml"]);
    let elsewhere = outside.path().join("e.yaml");
    std::fs::write(&elsewhere, spec("outside")).unwrap();
    ws.ok(&["run", "-q", elsewhere.to_str().unwrap()]);
    // A lock copied somewhere hone never wrote it is kept only when named.
    ws.write("k.yaml", &spec("kept"));
    ws.ok(&["run", "-q", "k.yaml"]);
    let moved = outside.path().join("moved.lock");
    std::fs::rename(ws.path("k.lock"), &moved).unwrap();
    std::fs::remove_file(ws.path("k.yaml")).unwrap();

    let gc = ws.ok(&["gc", "--keep", moved.to_str().unwrap()]).stdout;
    assert!(gc.contains("kept: .p/h.lock"), "{gc}");
    assert!(gc.contains("e.lock") && gc.contains("moved.lock"), "{gc}");
    assert!(gc.contains("removed 0 objects"), "{gc}");
    for spec in [".p/h.yaml", elsewhere.to_str().unwrap()] {
        let st = ws.ok(&["status", spec]).stdout;
        assert!(st.contains("1 up to date, 0 stale"), "{spec}: {st}");
    }
    // Without --keep the moved lock's results go; the others stay.
    let gc = ws.ok(&["gc"]).stdout;
    assert!(gc.contains("removed 1 object"), "{gc}");
    assert!(
        ws.ok(&["status", ".p/h.yaml"])
            .stdout
            .contains("1 up to date")
    );
    // A lock that is gone is forgotten.
    std::fs::remove_file(outside.path().join("e.lock")).unwrap();
    let gc = ws.ok(&["gc"]).stdout;
    assert!(!gc.contains("e.lock"), "{gc}");
    assert!(!ws.read(".hone/locks.json").contains("e.lock"));
}

#[test]
#[cfg(unix)]
fn leftovers_of_a_killed_lock_write_and_gc_are_cleared() {
    let ws = Workspace::new();
    ws.write("c.yaml", COPY);
    ws.ok(&["run", "-q", "c.yaml"]);
    // What a kill between the temporary file's write and its rename leaves, and what a
    // gc killed between moving an object out and deleting it leaves.
    ws.write(".c.lock.tmp-AbC123", "# hone lock file (partial");
    ws.write(".hone/tmp/trash-x/object/f1", "1");
    ws.write("unrelated.tmp-keep", "not hone's");
    ws.ok(&["run", "-q", "c.yaml"]);
    assert!(!ws.path(".c.lock.tmp-AbC123").exists());
    assert!(!ws.path(".hone/tmp/trash-x").exists());
    assert!(ws.path("unrelated.tmp-keep").exists());
    ws.write(".c.lock.tmp-Zz9", "partial");
    ws.write(".hone/tmp/trash-y/object/f1", "1");
    ws.ok(&["gc"]);
    assert!(!ws.path(".c.lock.tmp-Zz9").exists());
    assert!(!ws.path(".hone/tmp/trash-y").exists());
}

#[test]
#[cfg(unix)]
fn lock_files_get_ordinary_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let ws = Workspace::new();
    ws.write("c.yaml", COPY);
    ws.ok(&["run", "-q", "c.yaml"]);
    let mode = std::fs::metadata(ws.path("c.lock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
    // A mode the user chose is kept when the lock is rewritten.
    std::fs::set_permissions(ws.path("c.lock"), std::fs::Permissions::from_mode(0o664)).unwrap();
    ws.write("c.yaml", &COPY.replace("good", "fine"));
    ws.ok(&["run", "-q", "c.yaml"]);
    let mode = std::fs::metadata(ws.path("c.lock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o664);
}

/// What a stage writes private (0600, as transformers writes its safetensors) is stored
/// readable by everyone who can reach the store, directories listable, nothing writable.
#[test]
fn stored_objects_are_readable_by_a_teammate_sharing_the_store() {
    use std::os::unix::fs::PermissionsExt;
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        "name: p\nstages:\n  a: { kind: command, with: { cmd: \"umask 077 && mkdir -p ${outputs.d}/sub && echo x > ${outputs.d}/sub/w.bin\", outputs: { d: files } } }\n",
    );
    ws.ok(&["run", "-q", "p.yaml"]);
    let dir = object(&ws, "p.yaml", "a.d");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.join("sub/w.bin")), 0o444);
    assert_eq!(mode(&dir.join("sub")), 0o555);
    assert_eq!(mode(&dir), 0o555);
}
