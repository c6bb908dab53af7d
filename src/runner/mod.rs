//! Executes a pipeline against the workspace's store: decides per stage whether its
//! fingerprint is already stored, runs what is not, commits outputs, keeps the lock file
//! current. In parts:
//!
//! - `select`: which stages a run covers (targets, group names, file dependencies);
//! - `cache::material`: what goes into each stage's fingerprint;
//! - `execute`: the one execution path of a stage (scratch directory, the kind's work,
//!   commit to the store, run record) and the [`StageExecutor`]s that call it, in a thread
//!   of this process or in a `hone exec-stage` child: the seam a cluster executor uses;
//! - `status`: what `hone status` says and `hone exec-stage` checks, without running;
//! - this file: the run itself, scheduling prepared jobs and keeping the lock file.

mod execute;
mod select;
mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::cache::files::FileCache;
use crate::cache::lock::{explain, lock_path};
use crate::cache::material::material;
use crate::cache::{CacheError, LockEntry, LockFile, LockOutput, Store, fingerprint};
use crate::dag::Pipeline;
use crate::dag::schedule::{self, Skip, Step};
use crate::stages::StageError;

use execute::input_paths;
pub use execute::{Job, ProcessExecutor, StageExecutor, ThreadExecutor};
use select::check_deps;
pub use select::stage_indices;
pub use status::{StageState, exec_one, status};

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

/// Which [`StageExecutor`] runs the stages that must run.
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
    /// The lock file could not be written at the end (a full disk): the results are in
    /// the store, the next run records them.
    pub lock_error: Option<String>,
    pub wall: Duration,
}

impl RunReport {
    pub fn ok(&self) -> bool {
        self.frozen_violations.is_empty()
            && self.lock_error.is_none()
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
    /// A running stage's headline figure (`loss`, `score`, `kl`) changed.
    fn headline(&self, _id: &str, _name: &str, _value: f64) {}
    fn finished(&self, _report: &StageReport) {}
}

impl Observer for () {}

/// One stage's progress, forwarded to the observer under the stage's id.
struct Watched<'a> {
    observer: &'a dyn Observer,
    id: &'a str,
}

impl crate::stages::StageProgress for Watched<'_> {
    fn steps(&self, done: u64, total: u64) {
        self.observer.progress(self.id, done, total);
    }

    fn headline(&self, name: &str, value: f64) {
        self.observer.headline(self.id, name, value);
    }
}

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
    // What a run killed while writing the lock file left beside it.
    let _ = crate::artifact::remove_stale_temps(&lock_file);
    store.register_lock(&lock_file)?;
    let old_lock = LockFile::read(&lock_file)?;
    let mut lock = old_lock
        .clone()
        .unwrap_or_else(|| LockFile::new(&pipeline.spec.name));
    lock.pipeline = pipeline.spec.name.clone();

    let state = Mutex::new(State {
        outputs: BTreeMap::new(),
        lock,
        lock_dirty: old_lock.is_none(),
        files: store.file_cache(),
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

    let executor: Box<dyn StageExecutor + '_> = match &options.executor {
        Executor::InProcess => Box::new(ThreadExecutor { store: &store }),
        Executor::Process { program, overrides } => Box::new(ProcessExecutor {
            program: program.clone(),
            overrides: overrides.clone(),
            spec_path: spec_path.to_path_buf(),
            workspace: workspace.to_path_buf(),
        }),
    };
    let execute = |i: usize, job: Job| -> bool {
        let stage_id = &pipeline.spec.stages[i].id;
        observer.started(stage_id);
        let progress = Watched {
            observer,
            id: stage_id,
        };
        let result = executor
            .execute(pipeline, i, &job, cancel, &progress)
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
    let mut lock_error = None;
    if !options.frozen {
        // Stages no longer in the spec leave the lock; stages not selected keep their entries.
        let ids: BTreeSet<&str> = pipeline.spec.stages.iter().map(|s| s.id.as_str()).collect();
        let before = st.lock.stages.len();
        st.lock.stages.retain(|id, _| ids.contains(id.as_str()));
        if (st.lock_dirty || st.lock.stages.len() != before)
            && let Err(e) = st.lock.write(&lock_file)
        {
            // Reported with the stages' outcomes, not instead of them.
            lock_error = Some(format!(
                "{e}; every finished stage is in the store, and the next run records it"
            ));
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
        lock_error,
        wall: wall.elapsed(),
    })
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
