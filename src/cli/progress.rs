//! The live display of `hone run`. On a terminal: a spinner or a bar per running stage,
//! with its headline figures. On anything else (a CI log, a Slurm job's output, `nohup`):
//! plain lines, one when a stage starts, one when it ends, and for a long stage one at
//! most every `HONE_PROGRESS_INTERVAL` seconds (default 15) with how far it is, its rate,
//! the time left and its headline figures (loss, score, KL). No escape codes there.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::runner::{Observer, StageReport, Status};

/// The seconds between two progress lines of one stage in a log, unless
/// `HONE_PROGRESS_INTERVAL` says otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);

pub struct Display {
    mode: Mode,
    start: Instant,
    interval: Duration,
    stages: Mutex<BTreeMap<String, Live>>,
}

enum Mode {
    Off,
    Terminal(MultiProgress),
    Lines,
}

/// What the display knows of one running stage.
struct Live {
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Instant,
    /// The first progress report (time, units done), for the rate.
    first: Option<(Instant, u64)>,
    done: u64,
    total: u64,
    headline: Vec<(String, f64)>,
}

impl Display {
    /// `enabled` is false for `-q` and `--json`.
    pub fn new(enabled: bool) -> Self {
        use std::io::IsTerminal;
        let mode = if !enabled {
            Mode::Off
        } else if std::io::stderr().is_terminal() {
            Mode::Terminal(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
        } else {
            Mode::Lines
        };
        let interval = std::env::var("HONE_PROGRESS_INTERVAL")
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
            .unwrap_or(DEFAULT_INTERVAL);
        Display {
            mode,
            start: Instant::now(),
            interval,
            stages: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn clear(&self) {
        if let Mode::Terminal(multi) = &self.mode {
            let _ = multi.clear();
        }
    }

    fn line(&self, text: &str) {
        eprintln!("[{}] {text}", clock(self.start.elapsed()));
    }
}

impl Observer for Display {
    fn started(&self, id: &str) {
        let now = Instant::now();
        let bar = match &self.mode {
            Mode::Off => return,
            Mode::Terminal(multi) => {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("template"),
                );
                bar.set_message(id.to_string());
                bar.enable_steady_tick(Duration::from_millis(120));
                Some(bar)
            }
            Mode::Lines => {
                self.line(&format!("{id}: started"));
                None
            }
        };
        self.stages.lock().expect("display").insert(
            id.to_string(),
            Live {
                bar,
                started: now,
                last_line: now,
                first: None,
                done: 0,
                total: 0,
                headline: Vec::new(),
            },
        );
    }

    fn progress(&self, id: &str, done: u64, total: u64) {
        let mut stages = self.stages.lock().expect("display");
        let Some(live) = stages.get_mut(id) else {
            return;
        };
        let now = Instant::now();
        // A new phase (the total changes, or the count starts again) restarts the rate.
        if total != live.total || done < live.done {
            live.first = None;
        }
        live.first.get_or_insert((now, done));
        live.done = done;
        live.total = total;
        if let Some(bar) = &live.bar {
            if bar.length() != Some(total) {
                bar.set_style(
                    ProgressStyle::with_template(
                        "{spinner} {msg} [{bar:30}] {pos}/{len} {elapsed} (eta {eta})",
                    )
                    .expect("template")
                    .progress_chars("=> "),
                );
                bar.set_length(total);
            }
            bar.set_position(done);
        } else if matches!(self.mode, Mode::Lines)
            && now.duration_since(live.last_line) >= self.interval
            && done < total
        {
            live.last_line = now;
            let text = progress_line(id, live, now);
            drop(stages);
            self.line(&text);
        }
    }

    fn headline(&self, id: &str, name: &str, value: f64) {
        let mut stages = self.stages.lock().expect("display");
        let Some(live) = stages.get_mut(id) else {
            return;
        };
        match live.headline.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => live.headline.push((name.to_string(), value)),
        }
        if let Some(bar) = &live.bar {
            bar.set_message(format!("{id} {}", figures(&live.headline)));
        }
    }

    fn finished(&self, report: &StageReport) {
        let live = self.stages.lock().expect("display").remove(&report.id);
        match &self.mode {
            Mode::Off => {}
            Mode::Terminal(multi) => {
                if let Some(bar) = live.as_ref().and_then(|l| l.bar.as_ref()) {
                    bar.finish_and_clear();
                    multi.remove(bar);
                }
                if report.status != Status::Cached {
                    let _ = multi.println(format!(
                        "{} {} {}",
                        super::run::mark(&report.status),
                        report.id,
                        report.status.word()
                    ));
                }
            }
            Mode::Lines => {
                // Cached stages did not start; the summary lists them.
                if let Some(live) = live {
                    self.line(&end_line(report, &live));
                }
            }
        }
    }
}

/// `[  1m05s]`: minutes and seconds since the run started.
fn clock(elapsed: Duration) -> String {
    let s = elapsed.as_secs_f64();
    if s < 60.0 {
        format!("{s:>6.1}s")
    } else {
        format!("{:>3}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    }
}

fn figure(value: f64) -> String {
    let a = value.abs();
    if a >= 1000.0 {
        format!("{value:.0}")
    } else if a >= 10.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.4}")
    }
}

/// A rate to three significant figures or so: `512/s`, `45.3/s`, `5.72/s`, `0.938/s`.
fn rate_text(rate: f64) -> String {
    if rate >= 100.0 {
        format!("{rate:.0}")
    } else if rate >= 10.0 {
        format!("{rate:.1}")
    } else if rate >= 1.0 {
        format!("{rate:.2}")
    } else {
        format!("{rate:.3}")
    }
}

fn figures(headline: &[(String, f64)]) -> String {
    headline
        .iter()
        .map(|(n, v)| format!("{n} {}", figure(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn human_duration(seconds: f64) -> String {
    if seconds < 60.0 {
        format!("{seconds:.0}s")
    } else if seconds < 3600.0 {
        format!(
            "{}m{:02}s",
            (seconds / 60.0) as u64,
            (seconds % 60.0) as u64
        )
    } else {
        format!(
            "{}h{:02}m",
            (seconds / 3600.0) as u64,
            ((seconds % 3600.0) / 60.0) as u64
        )
    }
}

/// `base: 120/400 (30%), 8.00/s, eta 35s; loss 2.3100`
fn progress_line(id: &str, live: &Live, now: Instant) -> String {
    let mut text = format!("{id}: {}/{}", live.done, live.total);
    if live.total > 0 {
        text.push_str(&format!(
            " ({:.0}%)",
            100.0 * live.done as f64 / live.total as f64
        ));
    }
    if let Some((t0, d0)) = live.first {
        let secs = now.duration_since(t0).as_secs_f64();
        if secs > 0.0 && live.done > d0 {
            let rate = (live.done - d0) as f64 / secs;
            text.push_str(&format!(", {}/s", rate_text(rate)));
            if live.total > live.done {
                let left = (live.total - live.done) as f64 / rate;
                text.push_str(&format!(", eta {}", human_duration(left)));
            }
        }
    }
    if !live.headline.is_empty() {
        text.push_str(&format!("; {}", figures(&live.headline)));
    }
    text
}

/// `base: ran in 57.80 s; loss 1.2340` (a failure's reason is in the summary).
fn end_line(report: &StageReport, live: &Live) -> String {
    let secs = live.started.elapsed().as_secs_f64();
    let mut text = format!("{}: {} in {secs:.2} s", report.id, report.status.word());
    if !live.headline.is_empty() {
        text.push_str(&format!("; {}", figures(&live.headline)));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(done: u64, total: u64, at: Instant) -> Live {
        Live {
            bar: None,
            started: at,
            last_line: at,
            first: Some((at, 0)),
            done,
            total,
            headline: vec![("loss".into(), 2.31), ("kl".into(), 0.012345)],
        }
    }

    #[test]
    fn a_progress_line_says_how_far_how_fast_and_the_headline() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(10);
        assert_eq!(
            progress_line("base", &live(100, 400, t0), now),
            "base: 100/400 (25%), 10.0/s, eta 30s; loss 2.3100, kl 0.0123"
        );
        let mut l = live(0, 0, t0);
        l.headline.clear();
        assert_eq!(progress_line("x", &l, now), "x: 0/0");
    }

    #[test]
    fn clocks_and_durations_read_plainly() {
        assert_eq!(clock(Duration::from_millis(3200)), "   3.2s");
        assert_eq!(clock(Duration::from_secs(65)), "  1m05s");
        assert_eq!(human_duration(4000.0), "1h06m");
        assert_eq!(figure(12345.6), "12346");
        assert_eq!(figure(-0.5), "-0.5000");
        assert_eq!(
            [512.4, 45.31, 5.7241, 0.93831].map(rate_text),
            ["512", "45.3", "5.72", "0.938"]
        );
    }
}
