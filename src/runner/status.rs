//! `hone status` (what a run would do, and why) and `hone exec-stage` (one stage from the
//! store alone), both from a survey of the store and the lock file that runs nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use super::execute::{Job, StageExecutor, ThreadExecutor, input_paths};
use super::{Outputs, RunError, StageReport, Status, stage_indices, upstream_names};
use crate::cache::files::FileCache;
use crate::cache::lock::{explain, lock_path};
use crate::cache::material::{material, material_with_inputs};
use crate::cache::store::Lookup;
use crate::cache::{Fingerprint, LockFile, Store, fingerprint};
use crate::dag::Pipeline;
use crate::stages::StageError;

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
        Some(s) => s.file_cache(),
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
            .filter(|d| !crate::cache::hf_hub::dep_present(workspace, d))
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
                    let (cached, damaged) = match store.as_ref().map(|s| s.lookup(&fp)) {
                        Some(Lookup::Hit(record)) => (Some(record), None),
                        Some(Lookup::Damaged { output, why }) => (
                            None,
                            Some(format!(
                                "stored output `{output}` is damaged ({why}); the next run recomputes it"
                            )),
                        ),
                        _ => (None, None),
                    };
                    let reasons = match (&cached, old) {
                        (None, _) if damaged.is_some() => damaged.into_iter().collect(),
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
    let result = ThreadExecutor { store: &store }.execute(pipeline, i, &job, cancel, &());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::{RunOptions, run};

    fn pipeline(text: &str) -> Pipeline {
        crate::dag::load_str("p.yaml", text.to_string(), &[], crate::stages::kinds())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn spec(word: &str) -> String {
        format!(
            "name: p\nstages:\n  a: {{kind: command, with: {{cmd: \"echo {word} > ${{outputs.o}}\", outputs: {{o: files}}}}}}\n  b: {{kind: command, inputs: {{i: a.o}}, with: {{cmd: \"cat ${{inputs.i}} > ${{outputs.o}}\", outputs: {{o: files}}}}}}\n"
        )
    }

    fn reasons(p: &Pipeline, dir: &Path) -> Vec<(String, bool, String)> {
        status(p, &dir.join("p.yaml"), dir)
            .unwrap()
            .into_iter()
            .map(|s| (s.id, s.up_to_date, s.reasons.join("; ")))
            .collect()
    }

    #[test]
    fn status_explains_why_each_stage_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let spec_path = dir.path().join("p.yaml");
        let first = pipeline(&spec("one"));
        let before = reasons(&first, dir.path());
        assert_eq!(before[0], ("a".into(), false, "never run".into()));
        assert!(!before[1].1 && before[1].2.contains("upstream `a` is stale"));

        let cancel = AtomicBool::new(false);
        let report = run(
            &first,
            &spec_path,
            dir.path(),
            &RunOptions::default(),
            &cancel,
            &(),
        )
        .unwrap();
        assert!(report.ok());
        assert!(reasons(&first, dir.path()).iter().all(|(_, ok, _)| *ok));

        let edited = pipeline(&spec("two"));
        let after = reasons(&edited, dir.path());
        assert!(!after[0].1, "{after:?}");
        assert!(after[0].2.contains("param `cmd` changed"), "{after:?}");
        assert!(after[1].2.contains("upstream `a` is stale"), "{after:?}");
    }

    #[test]
    fn exec_stage_needs_its_upstream_stored_and_then_runs_one_stage() {
        let dir = tempfile::tempdir().unwrap();
        let spec_path = dir.path().join("p.yaml");
        let p = pipeline(&spec("one"));
        let cancel = AtomicBool::new(false);
        let err = exec_one(&p, &spec_path, dir.path(), "b", false, &cancel).unwrap_err();
        assert!(err.to_string().contains("needs `a` stored first"), "{err}");
        let a = exec_one(&p, &spec_path, dir.path(), "a", false, &cancel).unwrap();
        assert_eq!(a.status, Status::Ran);
        let again = exec_one(&p, &spec_path, dir.path(), "a", false, &cancel).unwrap();
        assert_eq!(again.status, Status::Cached);
        let b = exec_one(&p, &spec_path, dir.path(), "b", false, &cancel).unwrap();
        assert_eq!(b.status, Status::Ran);
        assert_eq!(b.outputs["o"].digest, a.outputs["o"].digest, "b copies a");
    }
}
