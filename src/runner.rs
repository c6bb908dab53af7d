//! Executes a pipeline against the workspace's store: decides per stage whether its
//! fingerprint is already stored, runs what is not, commits outputs, keeps the lock file
//! current. Also computes `hone status` without running anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::artifact;
use crate::cache::files::FileCache;
use crate::cache::fingerprint::FORMAT;
use crate::cache::lock::{explain, lock_path};
use crate::cache::{
    CacheError, Fingerprint, LockEntry, LockFile, LockOutput, RunRecord, Store, fingerprint,
};
use crate::dag::Pipeline;
use crate::dag::schedule::{self, Skip, Step};
use crate::spec::diag::did_you_mean;
use crate::stages::{StageContext, StageError};

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub targets: Vec<String>,
    pub downstream: bool,
    pub force: Vec<String>,
    pub force_all: bool,
    pub jobs: usize,
    pub keep_going: bool,
    pub frozen: bool,
    pub wait: bool,
    pub executor: Executor,
}

/// Where a stage that must run is executed.
#[derive(Debug, Clone, Default)]
pub enum Executor {
    /// In a worker thread of this process.
    #[default]
    InProcess,
    /// In a fresh `hone exec-stage` process (the binary at `program`) that shares no
    /// memory with the scheduler: what a cluster executor does, on one machine.
    Process {
        program: PathBuf,
        overrides: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Ran,
    Cached,
    Failed(String),
    Skipped(String),
    Interrupted,
}

impl Status {
    pub fn word(&self) -> &'static str {
        match self {
            Status::Ran => "ran",
            Status::Cached => "cached",
            Status::Failed(_) => "failed",
            Status::Skipped(_) => "skipped",
            Status::Interrupted => "interrupted",
        }
    }
}

#[derive(Debug, Clone)]
pub struct StageReport {
    pub id: String,
    pub status: Status,
    pub duration: Duration,
    pub fingerprint: Option<String>,
    pub outputs: BTreeMap<String, LockOutput>,
}

#[derive(Debug)]
pub struct RunReport {
    pub pipeline: String,
    pub stages: Vec<StageReport>,
    /// `--frozen` found that the run would change the lock file.
    pub frozen_violations: Vec<String>,
    pub wall: Duration,
}

impl RunReport {
    pub fn ok(&self) -> bool {
        self.frozen_violations.is_empty()
            && self
                .stages
                .iter()
                .all(|s| matches!(s.status, Status::Ran | Status::Cached))
    }

    pub fn interrupted(&self) -> bool {
        self.stages.iter().any(|s| s.status == Status::Interrupted)
    }
}

/// Hooks for a live display; called from worker threads.
pub trait Observer: Sync {
    fn started(&self, _id: &str) {}
    /// A running stage's progress: `done` of `total` units.
    fn progress(&self, _id: &str, _done: u64, _total: u64) {}
    fn finished(&self, _report: &StageReport) {}
}

impl Observer for () {}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// Bad input found before anything ran (exit code 2).
    #[error("{0}")]
    Input(String),
}

impl RunError {
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            RunError::Input(_)
                | RunError::Cache(CacheError::BadLock { .. } | CacheError::StoreVersion { .. })
        )
    }
}

/// Everything a worker needs to execute one stage.
pub struct Job {
    material: Fingerprint,
    fingerprint: String,
    inputs: BTreeMap<String, Vec<PathBuf>>,
}

/// Resolves `names` to stage indices, with suggestions for unknown ones.
pub fn stage_indices(pipeline: &Pipeline, names: &[String]) -> Result<Vec<usize>, RunError> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for name in names {
        match pipeline.index_of(name) {
            Some(i) => out.push(i),
            None => {
                // A group's stage name selects all its rounds.
                let rounds: Vec<usize> = (0..pipeline.spec.stages.len())
                    .filter(|&i| {
                        pipeline.spec.stages[i]
                            .id
                            .split_once('@')
                            .is_some_and(|(base, _)| base == name)
                    })
                    .collect();
                if rounds.is_empty() {
                    let help =
                        did_you_mean(name, pipeline.spec.stages.iter().map(|s| s.id.as_str()))
                            .map(|h| format!(" ({h})"))
                            .unwrap_or_default();
                    errors.push(format!(
                        "no stage `{name}` in pipeline `{}`{help}",
                        pipeline.spec.name
                    ));
                } else {
                    out.extend(rounds);
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(RunError::Input(errors.join("\n")))
    }
}

/// Checks that every file dependency of the selected stages exists, before anything runs.
fn check_deps(pipeline: &Pipeline, selected: &[usize], workspace: &Path) -> Result<(), RunError> {
    let mut missing = Vec::new();
    for &i in selected {
        let stage = &pipeline.spec.stages[i];
        for dep in &stage.signature.deps {
            if std::fs::symlink_metadata(workspace.join(dep)).is_err() {
                missing.push(format!("stage `{}` depends on `{dep}`, which does not exist (paths are relative to the workspace `{}`)", stage.id, workspace.display()));
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(RunError::Input(missing.join("\n")))
    }
}

/// The fingerprint material of stage `i`, given its upstream outputs.
fn material(
    pipeline: &Pipeline,
    i: usize,
    outputs: &BTreeMap<usize, BTreeMap<String, LockOutput>>,
    files: &mut FileCache,
    workspace: &Path,
) -> Result<Fingerprint, String> {
    let stage = &pipeline.spec.stages[i];
    let mut inputs = BTreeMap::new();
    for (port, refs) in &pipeline.bindings[i] {
        let mut digests = Vec::new();
        for (from, output) in refs {
            let digest = outputs
                .get(from)
                .and_then(|o| o.get(output))
                .map(|o| o.digest.clone())
                .ok_or_else(|| format!("upstream `{}` is stale", pipeline.spec.stages[*from].id))?;
            digests.push(digest);
        }
        inputs.insert(port.clone(), digests);
    }
    let mut deps = BTreeMap::new();
    for dep in &stage.signature.deps {
        let digest = files
            .digest(workspace, dep)
            .map_err(|e| format!("file `{dep}` cannot be read: {e}"))?;
        deps.insert(dep.clone(), digest.hex);
    }
    Ok(Fingerprint {
        format: FORMAT,
        kind: stage.kind.name().to_string(),
        kind_version: stage.kind.version(),
        params: stage.params.resolved().clone(),
        seed: stage.seed,
        inputs,
        deps,
    })
}

/// Output name -> what was stored for it.
type Outputs = BTreeMap<String, LockOutput>;

struct State {
    outputs: BTreeMap<usize, BTreeMap<String, LockOutput>>,
    lock: LockFile,
    lock_dirty: bool,
    files: FileCache,
    reports: BTreeMap<usize, StageReport>,
    /// Results handed from workers to the scheduler thread.
    results: BTreeMap<usize, Result<(Outputs, String), StageError>>,
    started: BTreeMap<usize, Instant>,
    frozen_violations: Vec<String>,
}

/// Runs the pipeline. Stages that finish are committed at once: an error or interrupt
/// later loses nothing already computed.
pub fn run(
    pipeline: &Pipeline,
    spec_path: &Path,
    workspace: &Path,
    options: &RunOptions,
    cancel: &AtomicBool,
    observer: &dyn Observer,
) -> Result<RunReport, RunError> {
    let wall = Instant::now();
    let targets = stage_indices(pipeline, &options.targets)?;
    let forced: BTreeSet<usize> = stage_indices(pipeline, &options.force)?
        .into_iter()
        .collect();
    let selected = pipeline.select(&targets, options.downstream);
    check_deps(pipeline, &selected, workspace)?;

    let store = Store::open(workspace)?;
    let _guard = store.lock(options.wait, &format!("hone run {}", spec_path.display()))?;
    store.clear_tmp()?;
    let lock_file = lock_path(spec_path);
    let old_lock = LockFile::read(&lock_file)?;
    let mut lock = old_lock
        .clone()
        .unwrap_or_else(|| LockFile::new(&pipeline.spec.name));
    lock.pipeline = pipeline.spec.name.clone();

    let state = Mutex::new(State {
        outputs: BTreeMap::new(),
        lock,
        lock_dirty: old_lock.is_none(),
        files: FileCache::load(store.root().join("files.json")),
        reports: BTreeMap::new(),
        results: BTreeMap::new(),
        started: BTreeMap::new(),
        frozen_violations: Vec::new(),
    });
    let frozen_entry = |id: &str| old_lock.as_ref().and_then(|l| l.stages.get(id));

    let record_lock = |st: &mut State, i: usize, entry: LockEntry| {
        let id = &pipeline.spec.stages[i].id;
        if options.frozen {
            match frozen_entry(id) {
                Some(old) if old.outputs != entry.outputs => st.frozen_violations.push(format!(
                    "stage `{id}` produced different outputs than the lock records ({})",
                    diff_outputs(&old.outputs, &entry.outputs)
                )),
                _ => {}
            }
            return;
        }
        if st.lock.stages.get(id) != Some(&entry) {
            st.lock.stages.insert(id.clone(), entry);
            st.lock_dirty = true;
            // Written after every stage, so a crash loses no record of finished work.
            if st.lock.write(&lock_file).is_ok() {
                st.lock_dirty = false;
            }
        }
    };

    let prepare = |i: usize| -> Step<Job> {
        let stage = &pipeline.spec.stages[i];
        let mut st = state.lock().expect("state lock");
        let st = &mut *st;
        let material = match material(pipeline, i, &st.outputs, &mut st.files, workspace) {
            Ok(m) => m,
            Err(why) => {
                let report = StageReport {
                    id: stage.id.clone(),
                    status: Status::Failed(why),
                    duration: Duration::ZERO,
                    fingerprint: None,
                    outputs: BTreeMap::new(),
                };
                observer.finished(&report);
                st.reports.insert(i, report);
                return Step::Done(false);
            }
        };
        let fp = fingerprint(&material);
        if options.frozen {
            let problem = match frozen_entry(&stage.id) {
                None => Some(format!("stage `{}` is not in the lock file", stage.id)),
                Some(old) if old.fingerprint != fp => {
                    let reasons =
                        explain(old, &material, &|port| upstream_names(pipeline, i, port));
                    Some(format!(
                        "stage `{}` would change: {}",
                        stage.id,
                        reasons.join("; ")
                    ))
                }
                Some(_) => None,
            };
            if let Some(problem) = problem {
                st.frozen_violations.push(problem.clone());
                let report = StageReport {
                    id: stage.id.clone(),
                    status: Status::Failed(format!("--frozen: {problem}")),
                    duration: Duration::ZERO,
                    fingerprint: Some(fp),
                    outputs: BTreeMap::new(),
                };
                observer.finished(&report);
                st.reports.insert(i, report);
                return Step::Done(false);
            }
        }
        let force = options.force_all || forced.contains(&i);
        if !force && let Some(record) = store.cached_run(&fp) {
            st.outputs.insert(i, record.outputs.clone());
            record_lock(
                st,
                i,
                LockEntry::new(&material, fp.clone(), record.outputs.clone()),
            );
            let report = StageReport {
                id: stage.id.clone(),
                status: Status::Cached,
                duration: Duration::ZERO,
                fingerprint: Some(fp),
                outputs: record.outputs,
            };
            observer.finished(&report);
            st.reports.insert(i, report);
            return Step::Done(true);
        }
        let inputs = input_paths(pipeline, i, &store, &st.outputs);
        st.started.insert(i, Instant::now());
        Step::Run(Job {
            material,
            fingerprint: fp,
            inputs,
        })
    };

    let execute = |i: usize, job: Job| -> bool {
        let stage_id = &pipeline.spec.stages[i].id;
        observer.started(stage_id);
        let started = Instant::now();
        let result = match &options.executor {
            Executor::InProcess => {
                let progress = |done: u64, total: u64| observer.progress(stage_id, done, total);
                execute_stage(&store, pipeline, i, &job, cancel, started, &progress)
            }
            Executor::Process { program, overrides } => execute_in_process(
                program, overrides, spec_path, workspace, stage_id, &job, cancel,
            ),
        }
        .map(|outputs| (outputs, job.fingerprint.clone()));
        let ok = result.is_ok();
        let mut st = state.lock().expect("state lock");
        if let Ok((outputs, _)) = &result {
            st.outputs.insert(i, outputs.clone());
            record_lock(
                &mut st,
                i,
                LockEntry::new(&job.material, job.fingerprint.clone(), outputs.clone()),
            );
        }
        st.results.insert(i, result);
        ok
    };

    let finished = |i: usize, _ok: bool| {
        let mut st = state.lock().expect("state lock");
        let duration = st.started.get(&i).map(|t| t.elapsed()).unwrap_or_default();
        let id = pipeline.spec.stages[i].id.clone();
        let report = match st.results.remove(&i) {
            Some(Ok((outputs, fp))) => StageReport {
                id,
                status: Status::Ran,
                duration,
                fingerprint: Some(fp),
                outputs,
            },
            Some(Err(StageError::Cancelled)) => StageReport {
                id,
                status: Status::Interrupted,
                duration,
                fingerprint: None,
                outputs: BTreeMap::new(),
            },
            Some(Err(e)) => StageReport {
                id,
                status: Status::Failed(e.to_string()),
                duration,
                fingerprint: None,
                outputs: BTreeMap::new(),
            },
            None => StageReport {
                id,
                status: Status::Failed("no result".into()),
                duration,
                fingerprint: None,
                outputs: BTreeMap::new(),
            },
        };
        observer.finished(&report);
        st.reports.insert(i, report);
    };

    let skipped = |i: usize, why: Skip| {
        let reason = match why {
            Skip::UpstreamFailed(f) => format!("upstream `{}` failed", pipeline.spec.stages[f].id),
            Skip::Stopped if cancel.load(std::sync::atomic::Ordering::Relaxed) => {
                "interrupted".to_string()
            }
            Skip::Stopped => {
                "run stopped after a failure (use --keep-going to run independent stages)"
                    .to_string()
            }
        };
        let report = StageReport {
            id: pipeline.spec.stages[i].id.clone(),
            status: Status::Skipped(reason),
            duration: Duration::ZERO,
            fingerprint: None,
            outputs: BTreeMap::new(),
        };
        observer.finished(&report);
        state.lock().expect("state lock").reports.insert(i, report);
    };

    schedule::run(
        &selected,
        |i| pipeline.upstream(i),
        |i| pipeline.spec.stages[i].threads,
        &schedule::Options {
            jobs: options.jobs.max(1),
            keep_going: options.keep_going,
        },
        cancel,
        prepare,
        execute,
        finished,
        skipped,
    );

    let mut st = state.into_inner().expect("state lock");
    let _ = st.files.save();
    if !options.frozen {
        // Stages no longer in the spec leave the lock; stages not selected keep their entries.
        let ids: BTreeSet<&str> = pipeline.spec.stages.iter().map(|s| s.id.as_str()).collect();
        let before = st.lock.stages.len();
        st.lock.stages.retain(|id, _| ids.contains(id.as_str()));
        if st.lock_dirty || st.lock.stages.len() != before {
            st.lock.write(&lock_file)?;
        }
    }
    let stages = selected
        .iter()
        .filter_map(|i| st.reports.remove(i))
        .collect();
    Ok(RunReport {
        pipeline: pipeline.spec.name.clone(),
        stages,
        frozen_violations: st.frozen_violations,
        wall: wall.elapsed(),
    })
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
    progress: &(dyn Fn(u64, u64) + Sync),
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

fn upstream_names(pipeline: &Pipeline, i: usize, port: &str) -> String {
    let names: Vec<String> = pipeline.bindings[i]
        .get(port)
        .into_iter()
        .flatten()
        .map(|(from, out)| format!("`{}.{out}`", pipeline.spec.stages[*from].id))
        .collect();
    names.join(", ")
}

fn diff_outputs(old: &BTreeMap<String, LockOutput>, new: &BTreeMap<String, LockOutput>) -> String {
    let mut parts = Vec::new();
    for (name, out) in new {
        match old.get(name) {
            Some(o) if o.digest != out.digest => parts.push(format!(
                "`{name}` {} -> {}",
                &o.digest[..12],
                &out.digest[..12]
            )),
            None => parts.push(format!("`{name}` is new")),
            _ => {}
        }
    }
    parts.join(", ")
}

/// One stage's state for `hone status`.
#[derive(Debug, Clone)]
pub struct StageState {
    pub id: String,
    pub up_to_date: bool,
    pub reasons: Vec<String>,
    pub fingerprint: Option<String>,
}

/// What `hone run` would do, and why, without running or writing anything.
pub fn status(
    pipeline: &Pipeline,
    spec_path: &Path,
    workspace: &Path,
) -> Result<Vec<StageState>, RunError> {
    let survey = survey(pipeline, spec_path, workspace)?;
    Ok(pipeline
        .order
        .iter()
        .map(|i| survey.states[i].clone())
        .collect())
}

/// The state of every stage, with the stored outputs and fingerprint material of those
/// whose fingerprint could be computed.
struct Survey {
    states: BTreeMap<usize, StageState>,
    outputs: BTreeMap<usize, Outputs>,
    materials: BTreeMap<usize, Fingerprint>,
}

fn survey(pipeline: &Pipeline, spec_path: &Path, workspace: &Path) -> Result<Survey, RunError> {
    let store = Store::open_existing(workspace)?;
    let lock = LockFile::read(&lock_path(spec_path))?;
    let mut files = match &store {
        Some(s) => FileCache::load(s.root().join("files.json")),
        None => FileCache::default(),
    };
    let mut outputs: BTreeMap<usize, Outputs> = BTreeMap::new();
    let mut materials = BTreeMap::new();
    let mut states: BTreeMap<usize, StageState> = BTreeMap::new();
    for &i in &pipeline.order {
        let stage = &pipeline.spec.stages[i];
        let old = lock.as_ref().and_then(|l| l.stages.get(&stage.id));
        let stale_upstream: Vec<String> = pipeline
            .upstream(i)
            .into_iter()
            .filter(|u| !states.get(u).is_some_and(|s| s.up_to_date))
            .map(|u| format!("upstream `{}` is stale", pipeline.spec.stages[u].id))
            .collect();
        let missing: Vec<String> = stage
            .signature
            .deps
            .iter()
            .filter(|d| std::fs::symlink_metadata(workspace.join(d)).is_err())
            .map(|d| format!("file `{d}` does not exist"))
            .collect();
        let state = if !missing.is_empty() {
            StageState {
                id: stage.id.clone(),
                up_to_date: false,
                reasons: missing,
                fingerprint: None,
            }
        } else if !stale_upstream.is_empty() {
            // Compare what can be compared: the stage's own params, seed, kind and files.
            let mut reasons = stale_upstream;
            if let Some(old) = old
                && let Ok(m) =
                    material_with_inputs(pipeline, i, old.inputs.clone(), &mut files, workspace)
            {
                reasons.extend(explain(old, &m, &|_| String::new()));
            }
            StageState {
                id: stage.id.clone(),
                up_to_date: false,
                reasons,
                fingerprint: None,
            }
        } else {
            match material(pipeline, i, &outputs, &mut files, workspace) {
                Err(why) => StageState {
                    id: stage.id.clone(),
                    up_to_date: false,
                    reasons: vec![why],
                    fingerprint: None,
                },
                Ok(m) => {
                    let fp = fingerprint(&m);
                    let cached = store.as_ref().and_then(|s| s.cached_run(&fp));
                    let reasons = match (&cached, old) {
                        (Some(_), Some(old)) if old.fingerprint == fp => Vec::new(),
                        (Some(_), _) => vec![
                            "stored result found; the lock file will be updated on the next run"
                                .into(),
                        ],
                        (None, None) => vec!["never run".into()],
                        (None, Some(old)) if old.fingerprint == fp => {
                            vec!["outputs are not in the store (a fresh clone, or removed by `hone gc`)".into()]
                        }
                        (None, Some(old)) => {
                            let r = explain(old, &m, &|port| upstream_names(pipeline, i, port));
                            if r.is_empty() {
                                vec!["fingerprint format changed".into()]
                            } else {
                                r
                            }
                        }
                    };
                    if let Some(record) = &cached {
                        outputs.insert(i, record.outputs.clone());
                    }
                    materials.insert(i, m);
                    StageState {
                        id: stage.id.clone(),
                        up_to_date: cached.is_some(),
                        reasons,
                        fingerprint: Some(fp),
                    }
                }
            }
        };
        states.insert(i, state);
    }
    Ok(Survey {
        states,
        outputs,
        materials,
    })
}

/// Runs one stage in this process, reading its inputs from the store and writing its
/// outputs and run record there: `hone exec-stage`, what a cluster executor (Slurm,
/// Kubernetes) would call. Every upstream stage must already be stored. The workspace
/// lock and the lock file are left to the scheduler that called it.
pub fn exec_one(
    pipeline: &Pipeline,
    spec_path: &Path,
    workspace: &Path,
    stage_id: &str,
    force: bool,
    cancel: &AtomicBool,
) -> Result<StageReport, RunError> {
    let i = stage_indices(pipeline, &[stage_id.to_string()])?[0];
    let survey = survey(pipeline, spec_path, workspace)?;
    let stale: Vec<String> = pipeline
        .upstream(i)
        .into_iter()
        .filter(|u| !survey.states[u].up_to_date)
        .map(|u| format!("`{}`", pipeline.spec.stages[u].id))
        .collect();
    if !stale.is_empty() {
        return Err(RunError::Input(format!(
            "stage `{stage_id}` needs {} stored first (run them, or use `hone run`)",
            stale.join(", ")
        )));
    }
    let state = &survey.states[&i];
    let Some(material) = survey.materials.get(&i).cloned() else {
        return Err(RunError::Input(format!(
            "stage `{stage_id}`: {}",
            state.reasons.join("; ")
        )));
    };
    let fp = fingerprint(&material);
    let store = Store::open(workspace)?;
    let id = stage_id.to_string();
    if !force && let Some(record) = store.cached_run(&fp) {
        let report = StageReport {
            id,
            status: Status::Cached,
            duration: Duration::ZERO,
            fingerprint: Some(fp),
            outputs: record.outputs,
        };
        return Ok(report);
    }
    let inputs = input_paths(pipeline, i, &store, &survey.outputs);
    let job = Job {
        material,
        fingerprint: fp.clone(),
        inputs,
    };
    let started = Instant::now();
    let result = execute_stage(&store, pipeline, i, &job, cancel, started, &|_, _| {});
    let duration = started.elapsed();
    Ok(match result {
        Ok(outputs) => StageReport {
            id,
            status: Status::Ran,
            duration,
            fingerprint: Some(fp),
            outputs,
        },
        Err(StageError::Cancelled) => StageReport {
            id,
            status: Status::Interrupted,
            duration,
            fingerprint: Some(fp),
            outputs: BTreeMap::new(),
        },
        Err(e) => StageReport {
            id,
            status: Status::Failed(e.to_string()),
            duration,
            fingerprint: Some(fp),
            outputs: BTreeMap::new(),
        },
    })
}

/// The store paths (relative to the workspace) bound to each input port of stage `i`.
fn input_paths(
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

/// Fingerprint material with the given input digests (used to compare a stage whose
/// upstream is stale against its lock entry on everything but its inputs).
fn material_with_inputs(
    pipeline: &Pipeline,
    i: usize,
    inputs: BTreeMap<String, Vec<String>>,
    files: &mut FileCache,
    workspace: &Path,
) -> Result<Fingerprint, String> {
    let mut fake = BTreeMap::new();
    for (port, refs) in &pipeline.bindings[i] {
        for (k, (from, out)) in refs.iter().enumerate() {
            let digest = inputs
                .get(port)
                .and_then(|d| d.get(k))
                .cloned()
                .unwrap_or_default();
            fake.entry(*from).or_insert_with(BTreeMap::new).insert(
                out.clone(),
                LockOutput {
                    digest,
                    ty: crate::artifact::ArtifactType::Files,
                    size: 0,
                },
            );
        }
    }
    material(pipeline, i, &fake, files, workspace)
}
