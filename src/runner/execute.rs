//! The one execution path of a stage, and the executors that call it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::Outputs;
use crate::artifact;
use crate::cache::{Fingerprint, LockOutput, RunRecord, Store};
use crate::dag::Pipeline;
use crate::stages::{StageContext, StageError, StageProgress};

/// Everything a worker needs to execute one stage.
pub struct Job {
    pub material: Fingerprint,
    pub fingerprint: String,
    /// For each input port, the store paths (relative to the workspace) bound to it.
    pub inputs: BTreeMap<String, Vec<PathBuf>>,
}

/// Where a stage that must run is executed. Both implementations end in the same
/// execution path ([`execute_stage`]): [`ThreadExecutor`] calls it in this process,
/// [`ProcessExecutor`] in a `hone exec-stage` child that shares no memory with the
/// scheduler, the seam of a cluster executor (a Slurm job runs the same command).
pub trait StageExecutor: Sync {
    /// Runs stage `i` of `pipeline` and returns the outputs it committed to the store.
    fn execute(
        &self,
        pipeline: &Pipeline,
        i: usize,
        job: &Job,
        cancel: &AtomicBool,
        progress: &dyn StageProgress,
    ) -> Result<Outputs, StageError>;
}

/// Runs a stage in the calling thread.
pub struct ThreadExecutor<'a> {
    pub store: &'a Store,
}

impl StageExecutor for ThreadExecutor<'_> {
    fn execute(
        &self,
        pipeline: &Pipeline,
        i: usize,
        job: &Job,
        cancel: &AtomicBool,
        progress: &dyn StageProgress,
    ) -> Result<Outputs, StageError> {
        execute_stage(
            self.store,
            pipeline,
            i,
            job,
            cancel,
            Instant::now(),
            progress,
        )
    }
}

/// Runs a stage as `PROGRAM exec-stage SPEC STAGE --force --json` in the workspace and
/// reads the JSON report it prints.
pub struct ProcessExecutor {
    pub program: PathBuf,
    /// The `-S` overrides the spec was loaded with.
    pub overrides: Vec<String>,
    pub spec_path: PathBuf,
    pub workspace: PathBuf,
}

impl StageExecutor for ProcessExecutor {
    fn execute(
        &self,
        pipeline: &Pipeline,
        i: usize,
        job: &Job,
        cancel: &AtomicBool,
        _progress: &dyn StageProgress,
    ) -> Result<Outputs, StageError> {
        execute_in_process(
            &self.program,
            &self.overrides,
            &self.spec_path,
            &self.workspace,
            &pipeline.spec.stages[i].id,
            job,
            cancel,
        )
    }
}

/// Runs one stage in a scratch directory, commits its outputs and writes its run record.
/// Shared by the in-process scheduler and `hone exec-stage`.
fn execute_stage(
    store: &Store,
    pipeline: &Pipeline,
    i: usize,
    job: &Job,
    cancel: &AtomicBool,
    started: Instant,
    progress: &dyn StageProgress,
) -> Result<BTreeMap<String, LockOutput>, StageError> {
    let stage = &pipeline.spec.stages[i];
    let io = |context: String| move |source| StageError::Io { context, source };
    let tmp = store
        .new_tmp_dir(&stage.id)
        .map_err(|e| StageError::Failed(e.to_string()))?;
    let rel = |p: &Path| {
        p.strip_prefix(&store.workspace)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| p.to_path_buf())
    };
    let out_dir = tmp.join("out");
    std::fs::create_dir_all(&out_dir).map_err(io("creating the output directory".into()))?;
    let outputs: BTreeMap<String, PathBuf> = stage
        .signature
        .outputs
        .iter()
        .map(|o| (o.name.clone(), rel(&out_dir.join(&o.name))))
        .collect();
    let resume_dir = store.resume_dir(&job.fingerprint);
    std::fs::create_dir_all(&resume_dir).map_err(io("creating the resume directory".into()))?;
    let log_path = tmp.join("log");
    let ctx = StageContext {
        stage_id: &stage.id,
        fingerprint: &job.fingerprint,
        seed: stage.seed,
        threads: stage.threads,
        workspace: &store.workspace,
        inputs: &job.inputs,
        outputs: &outputs,
        resume_dir: &resume_dir,
        log_path: &log_path,
        cancel,
        progress,
    };
    let span = tracing::info_span!("stage", id = %stage.id, kind = stage.kind.name());
    let _enter = span.enter();
    tracing::info!("running");
    // A panic is a bug in hone, but it must fail the stage, not the run: caught here it
    // becomes the stage's error (and the scheduler goes on to what does not depend on it).
    let Some(kind) = crate::stages::find(stage.kind.name()) else {
        let _ = artifact::remove_path(&tmp);
        return Err(StageError::Failed(format!(
            "internal error: no stage kind `{}` to run",
            stage.kind.name()
        )));
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        kind.execute(&stage.params, &ctx)
    }))
    .unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(StageError::Failed(format!(
            "internal error (a bug in hone, please report it): {message}"
        )))
    });
    // The latest log of each stage stays readable, whatever happened.
    let log_dest = store.log_path(&stage.id);
    if log_path.exists() {
        let _ = std::fs::create_dir_all(log_dest.parent().expect("logs dir"));
        let _ = std::fs::rename(&log_path, &log_dest);
    }
    if let Err(e) = result {
        let _ = artifact::remove_path(&tmp);
        return Err(e);
    }
    let mut committed = BTreeMap::new();
    for port in &stage.signature.outputs {
        let produced = out_dir.join(&port.name);
        let digest = store
            .commit(&produced)
            .map_err(|e| StageError::Failed(e.to_string()))?;
        committed.insert(
            port.name.clone(),
            LockOutput {
                digest: digest.hex,
                ty: port.ty.clone(),
                size: digest.size,
            },
        );
    }
    let record = RunRecord {
        format: 1,
        fingerprint: job.fingerprint.clone(),
        stage: stage.id.clone(),
        kind: stage.kind.name().to_string(),
        inputs: job.material.inputs.clone(),
        outputs: committed.clone(),
        duration_s: started.elapsed().as_secs_f64(),
        finished_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    store
        .write_run(&record)
        .map_err(|e| StageError::Failed(e.to_string()))?;
    let _ = artifact::remove_path(&tmp);
    let _ = artifact::remove_path(&resume_dir);
    tracing::info!(seconds = record.duration_s, "done");
    Ok(committed)
}

/// Runs a stage through `hone exec-stage` in a child process and reads its JSON report.
fn execute_in_process(
    program: &Path,
    overrides: &[String],
    spec_path: &Path,
    workspace: &Path,
    stage_id: &str,
    job: &Job,
    cancel: &AtomicBool,
) -> Result<Outputs, StageError> {
    let mut command = std::process::Command::new(program);
    command
        .arg("exec-stage")
        .arg(spec_path)
        .arg(stage_id)
        .arg("--force")
        .arg("--json")
        .current_dir(workspace);
    for o in overrides {
        command.arg("-S").arg(o);
    }
    let child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| StageError::Io {
            context: format!("starting `{}`", program.display()),
            source,
        })?;
    let pid = child.id();
    let watcher_done = AtomicBool::new(false);
    let output = std::thread::scope(|scope| {
        // Forward an interrupt to the child, which stops its stage cleanly.
        scope.spawn(|| {
            while !watcher_done.load(std::sync::atomic::Ordering::Relaxed) {
                if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                    #[cfg(unix)]
                    // SAFETY: kill(2) on our own child.
                    unsafe {
                        libc::kill(pid as i32, libc::SIGINT);
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let output = child.wait_with_output();
        watcher_done.store(true, std::sync::atomic::Ordering::Relaxed);
        output
    })
    .map_err(|source| StageError::Io {
        context: "waiting for `hone exec-stage`".into(),
        source,
    })?;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).map_err(|_| {
        StageError::Failed(format!(
            "`hone exec-stage` exited with {} and no report:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        ))
    })?;
    match report["status"].as_str() {
        Some("ran" | "cached") => {
            let fp = report["fingerprint"].as_str().unwrap_or_default();
            if fp != job.fingerprint {
                return Err(StageError::Failed(format!(
                    "`hone exec-stage` computed fingerprint {fp}, the scheduler {}: the spec or its files changed during the run",
                    job.fingerprint
                )));
            }
            serde_json::from_value(report["outputs"].clone()).map_err(|e| {
                StageError::Failed(format!("unreadable `hone exec-stage` report: {e}"))
            })
        }
        Some("interrupted") => Err(StageError::Cancelled),
        _ => Err(StageError::Failed(
            report["reason"].as_str().unwrap_or("failed").to_string(),
        )),
    }
}

/// The store paths (relative to the workspace) bound to each input port of stage `i`.
pub(super) fn input_paths(
    pipeline: &Pipeline,
    i: usize,
    store: &Store,
    outputs: &BTreeMap<usize, Outputs>,
) -> BTreeMap<String, Vec<PathBuf>> {
    pipeline.bindings[i]
        .iter()
        .map(|(port, refs)| {
            let paths = refs
                .iter()
                .map(|(from, out)| store.object_rel(&outputs[from][out].digest))
                .collect();
            (port.clone(), paths)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::fingerprint;

    fn pipeline(text: &str) -> Pipeline {
        crate::dag::load_str("p.yaml", text.to_string(), &[], crate::stages::kinds())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn job(p: &Pipeline, i: usize) -> Job {
        let stage = &p.spec.stages[i];
        let material = Fingerprint {
            format: crate::cache::fingerprint::FORMAT,
            kind: stage.kind.name().into(),
            kind_version: stage.kind.version(),
            params: stage.params.resolved().clone(),
            seed: stage.seed,
            inputs: BTreeMap::new(),
            deps: BTreeMap::new(),
            context: BTreeMap::new(),
        };
        Job {
            fingerprint: fingerprint(&material),
            material,
            inputs: BTreeMap::new(),
        }
    }

    const SPEC: &str = "name: p\nstages:\n  a: {kind: command, with: {cmd: \"echo hi > ${outputs.o}\", outputs: {o: files}}}\n";

    #[test]
    fn the_thread_executor_runs_commits_and_records_a_stage() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let p = pipeline(SPEC);
        let job = job(&p, 0);
        let cancel = AtomicBool::new(false);
        let outputs = ThreadExecutor { store: &store }
            .execute(&p, 0, &job, &cancel, &())
            .unwrap();
        assert_eq!(
            outputs["o"].digest,
            blake3::hash(b"hi\n").to_hex().to_string()
        );
        let record = store.cached_run(&job.fingerprint).expect("a run record");
        assert_eq!(record.outputs, outputs);
    }

    /// A stand-in for `hone exec-stage`: a script that prints `report` whatever it is asked.
    fn fake_program(dir: &Path, report: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("fake-hone");
        std::fs::write(&path, format!("#!/bin/sh\ncat <<'EOF'\n{report}\nEOF\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn run_fake(report: &str) -> Result<Outputs, StageError> {
        let dir = tempfile::tempdir().unwrap();
        let p = pipeline(SPEC);
        let job = job(&p, 0);
        let report = report.replace("FP", &job.fingerprint);
        let executor = ProcessExecutor {
            program: fake_program(dir.path(), &report),
            overrides: Vec::new(),
            spec_path: dir.path().join("p.yaml"),
            workspace: dir.path().to_path_buf(),
        };
        executor.execute(&p, 0, &job, &AtomicBool::new(false), &())
    }

    #[test]
    fn the_process_executor_reads_the_childs_report() {
        let digest = "ab".repeat(32);
        let outputs = run_fake(&format!(
            r#"{{"status": "ran", "fingerprint": "FP", "outputs": {{"o": {{"digest": "{digest}", "size": 3, "type": "files"}}}}}}"#
        ))
        .unwrap();
        assert_eq!(outputs["o"].digest, digest);
    }

    #[test]
    fn the_process_executor_refuses_a_report_for_another_fingerprint() {
        let err = run_fake(r#"{"status": "ran", "fingerprint": "0000", "outputs": {}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("computed fingerprint 0000"), "{err}");
    }

    #[test]
    fn the_process_executor_reports_failures_interrupts_and_garbage() {
        let err = run_fake(r#"{"status": "failed", "reason": "out of memory"}"#).unwrap_err();
        assert_eq!(err.to_string(), "out of memory");
        let err = run_fake(r#"{"status": "interrupted"}"#).unwrap_err();
        assert!(matches!(err, StageError::Cancelled));
        let err = run_fake("Segmentation fault").unwrap_err().to_string();
        assert!(err.contains("no report"), "{err}");
    }
}
