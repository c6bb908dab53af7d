//! Runs a selection of stages in dependency order, several at once where `--jobs` and
//! the stages' thread hints allow. It knows nothing of caching or stages: `prepare` (on
//! the scheduler thread) settles a stage at once or hands back a job, which `execute`
//! runs on a worker thread.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

/// What `prepare` decided for a stage.
pub enum Step<J> {
    /// Settled without a worker (a cache hit, or a failure found early): success or not.
    Done(bool),
    /// Work for a worker thread.
    Run(J),
}

/// Why a stage did not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// An upstream stage failed (the first one found).
    UpstreamFailed(usize),
    /// The run stopped after a failure (no `--keep-going`) or an interrupt.
    Stopped,
}

pub struct Options {
    pub jobs: usize,
    pub keep_going: bool,
}

/// Schedules `selected` (indices in topological order). `deps(i)` lists the direct
/// upstream stages of `i`; those outside `selected` count as already done.
#[expect(
    clippy::too_many_arguments,
    reason = "each closure is one role of the caller"
)]
pub fn run<J: Send>(
    selected: &[usize],
    deps: impl Fn(usize) -> Vec<usize>,
    threads: impl Fn(usize) -> usize,
    options: &Options,
    cancel: &AtomicBool,
    mut prepare: impl FnMut(usize) -> Step<J>,
    execute: impl Fn(usize, J) -> bool + Sync,
    mut finished: impl FnMut(usize, bool),
    mut skipped: impl FnMut(usize, Skip),
) {
    let jobs = options.jobs.max(1);
    let position: BTreeMap<usize, usize> =
        selected.iter().enumerate().map(|(p, &i)| (i, p)).collect();
    let mut waiting_on: BTreeMap<usize, usize> = BTreeMap::new();
    let mut dependents: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &i in selected {
        let upstream: Vec<usize> = deps(i)
            .into_iter()
            .filter(|d| position.contains_key(d))
            .collect();
        waiting_on.insert(i, upstream.len());
        for d in upstream {
            dependents.entry(d).or_default().push(i);
        }
    }
    // Ready stages, ordered by their place in `selected`.
    let mut ready: BTreeSet<usize> = selected
        .iter()
        .filter(|i| waiting_on[i] == 0)
        .map(|i| position[i])
        .collect();
    let mut settled: BTreeSet<usize> = BTreeSet::new();
    let mut stop = false;
    let (tx, rx) = mpsc::channel::<(usize, bool)>();
    let execute = &execute;

    std::thread::scope(|scope| {
        let mut used_threads = 0;
        let mut running: BTreeMap<usize, usize> = BTreeMap::new();
        loop {
            // Start what can start.
            loop {
                if stop || cancel.load(Ordering::Relaxed) {
                    break;
                }
                let pick = ready.iter().copied().find(|p| {
                    let need = threads(selected[*p]).clamp(1, jobs);
                    running.is_empty() || used_threads + need <= jobs
                });
                let Some(p) = pick else { break };
                ready.remove(&p);
                let i = selected[p];
                match prepare(i) {
                    Step::Done(ok) => {
                        settled.insert(i);
                        stop |= settle(
                            i,
                            ok,
                            options,
                            &dependents,
                            &mut waiting_on,
                            &mut ready,
                            &position,
                            &mut settled,
                            &mut skipped,
                        );
                    }
                    Step::Run(job) => {
                        let need = threads(i).clamp(1, jobs);
                        used_threads += need;
                        running.insert(i, need);
                        let tx = tx.clone();
                        scope.spawn(move || {
                            // Whatever happens in `execute`, the scheduler hears of it: a
                            // worker that died silently would leave it waiting forever.
                            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                execute(i, job)
                            }))
                            .unwrap_or(false);
                            let _ = tx.send((i, ok));
                        });
                    }
                }
            }
            if running.is_empty() {
                break;
            }
            let (i, ok) = rx.recv().expect("a worker is running");
            used_threads -= running.remove(&i).unwrap_or(0);
            settled.insert(i);
            finished(i, ok);
            stop |= settle(
                i,
                ok,
                options,
                &dependents,
                &mut waiting_on,
                &mut ready,
                &position,
                &mut settled,
                &mut skipped,
            );
        }
    });
    for &i in selected {
        if !settled.contains(&i) {
            skipped(i, Skip::Stopped);
        }
    }
}

/// Records a finished stage: frees its dependents, or skips them if it failed. Returns
/// whether the whole run should stop.
#[expect(
    clippy::too_many_arguments,
    reason = "the scheduler's state, passed by parts"
)]
fn settle(
    i: usize,
    ok: bool,
    options: &Options,
    dependents: &BTreeMap<usize, Vec<usize>>,
    waiting_on: &mut BTreeMap<usize, usize>,
    ready: &mut BTreeSet<usize>,
    position: &BTreeMap<usize, usize>,
    settled: &mut BTreeSet<usize>,
    skipped: &mut impl FnMut(usize, Skip),
) -> bool {
    if ok {
        for &d in dependents.get(&i).into_iter().flatten() {
            let n = waiting_on.get_mut(&d).expect("dependent is selected");
            *n -= 1;
            if *n == 0 {
                ready.insert(position[&d]);
            }
        }
        return false;
    }
    let mut stack: Vec<usize> = dependents.get(&i).cloned().unwrap_or_default();
    while let Some(d) = stack.pop() {
        if settled.insert(d) {
            skipped(d, Skip::UpstreamFailed(i));
            stack.extend(dependents.get(&d).into_iter().flatten().copied());
        }
    }
    !options.keep_going
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// a -> b -> d, a -> c -> d, e alone. Returns the event log.
    fn check(fail: &[usize], keep_going: bool, jobs: usize) -> Vec<String> {
        check_with(fail, &[], keep_going, jobs)
    }

    /// As `check`, with stages in `panic` panicking instead of returning.
    fn check_with(fail: &[usize], panic: &[usize], keep_going: bool, jobs: usize) -> Vec<String> {
        let deps = |i: usize| match i {
            1 | 2 => vec![0],
            3 => vec![1, 2],
            _ => vec![],
        };
        let log = Mutex::new(Vec::new());
        let cancel = AtomicBool::new(false);
        run(
            &[0, 1, 2, 3, 4],
            deps,
            |_| 1,
            &Options { jobs, keep_going },
            &cancel,
            |i| {
                if i == 4 {
                    Step::Done(true)
                } else {
                    Step::Run(i)
                }
            },
            |i, _| {
                if panic.contains(&i) {
                    panic!("stage {i} panics");
                }
                !fail.contains(&i)
            },
            |i, ok| log.lock().unwrap().push(format!("{i}:{ok}")),
            |i, why| log.lock().unwrap().push(format!("{i}:skip:{why:?}")),
        );
        let mut log = log.into_inner().unwrap();
        log.sort();
        log
    }

    #[test]
    fn runs_everything_in_order() {
        assert_eq!(
            check(&[], false, 1),
            vec!["0:true", "1:true", "2:true", "3:true"]
        );
        assert_eq!(
            check(&[], false, 4),
            vec!["0:true", "1:true", "2:true", "3:true"]
        );
    }

    #[test]
    fn keep_going_skips_only_descendants() {
        assert_eq!(
            check(&[1], true, 1),
            vec!["0:true", "1:false", "2:true", "3:skip:UpstreamFailed(1)"]
        );
    }

    #[test]
    fn a_failure_stops_the_run_without_keep_going() {
        assert_eq!(
            check(&[0], false, 1),
            vec![
                "0:false",
                "1:skip:UpstreamFailed(0)",
                "2:skip:UpstreamFailed(0)",
                "3:skip:UpstreamFailed(0)",
                "4:skip:Stopped"
            ]
        );
    }

    #[test]
    fn a_panicking_stage_fails_instead_of_hanging_the_run() {
        assert_eq!(
            check_with(&[], &[1], true, 2),
            vec!["0:true", "1:false", "2:true", "3:skip:UpstreamFailed(1)"]
        );
    }
}
