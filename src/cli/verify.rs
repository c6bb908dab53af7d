//! `hone verify`: re-digest every stored artifact and check every run record.

use clap::Args;

use super::{CliError, human_size, out, workspace};
use std::collections::BTreeSet;

use crate::cache::{RunRecord, Store};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Remove corrupt objects, the run records that produced them and the run records of
    /// everything computed from them, so the next run recomputes them.
    #[arg(long)]
    pub fix: bool,
}

pub fn run(args: VerifyArgs) -> Result<u8, CliError> {
    let ws = workspace()?;
    let Some(store) = Store::open_existing(&ws)? else {
        out("nothing to verify: no `.hone/` store here\n");
        return Ok(0);
    };
    let _guard = if args.fix {
        Some(store.lock(false, "hone verify --fix")?)
    } else {
        None
    };
    let io = |e: std::io::Error| CliError::Failed(format!("reading the store: {e}"));
    let mut problems = Vec::new();
    let mut corrupt = BTreeSet::new();
    let (mut n_objects, mut bytes) = (0, 0u64);
    for digest in store.list_objects().map_err(io)? {
        n_objects += 1;
        match crate::artifact::digest_path(&store.object_path(&digest)) {
            Ok(d) if d.hex == digest => bytes += d.size,
            Ok(d) => {
                problems.push(format!(
                    "object {digest} is corrupt: its content digests to {}",
                    d.hex
                ));
                corrupt.insert(digest);
            }
            Err(e) => {
                problems.push(format!("object {digest} cannot be read: {e}"));
                corrupt.insert(digest);
            }
        }
    }
    let runs = store.list_runs().map_err(io)?;
    let mut bad_runs = std::collections::BTreeSet::new();
    let mut records = Vec::new();
    for fp in &runs {
        match store.read_run(fp) {
            None => {
                problems.push(format!("run record {fp} cannot be read"));
                bad_runs.insert(fp.clone());
            }
            Some(record) => {
                for (name, o) in &record.outputs {
                    if corrupt.contains(&o.digest) {
                        problems.push(format!(
                            "stage `{}` output `{name}` uses corrupt object {}",
                            record.stage, o.digest
                        ));
                        bad_runs.insert(fp.clone());
                    } else if !store.has_object(&o.digest) {
                        problems.push(format!(
                            "stage `{}` output `{name}`: object {} is missing",
                            record.stage, o.digest
                        ));
                        bad_runs.insert(fp.clone());
                    }
                }
                records.push(record);
            }
        }
    }
    for (record, damaged) in derived_from(&records, &corrupt) {
        problems.push(format!(
            "stage `{}` (run {}) was computed from damaged object {damaged}",
            record.stage,
            &record.fingerprint[..12]
        ));
        bad_runs.insert(record.fingerprint.clone());
    }
    let mut text = format!(
        "checked {n_objects} objects ({}) and {} run records\n",
        human_size(bytes),
        runs.len()
    );
    for p in &problems {
        text.push_str(&format!("  problem: {p}\n"));
    }
    if problems.is_empty() {
        text.push_str("all intact\n");
        out(&text);
        return Ok(0);
    }
    if args.fix {
        for digest in &corrupt {
            store.remove_object(digest).map_err(io)?;
        }
        for fp in &bad_runs {
            store.remove_run(fp).map_err(io)?;
        }
        text.push_str(&format!(
            "fixed: removed {} objects and {} run records; the next `hone run` recomputes them\n",
            corrupt.len(),
            bad_runs.len()
        ));
        out(&text);
        return Ok(0);
    }
    text.push_str(
        "run `hone verify --fix` to drop the damaged results, and what was computed from them, so the next run recomputes them\n",
    );
    out(&text);
    Ok(1)
}

/// The runs that read a damaged object, directly or through the outputs of other such
/// runs, each with the damaged digest it read. A damaged object may have been read before
/// anyone noticed, so everything downstream of it is suspect: the run records are
/// dropped so the next run recomputes them (their objects match their digests and stay
/// until `hone gc`).
fn derived_from<'a>(
    records: &'a [RunRecord],
    damaged: &BTreeSet<String>,
) -> Vec<(&'a RunRecord, String)> {
    let mut tainted = damaged.clone();
    let mut found: Vec<(&RunRecord, String)> = Vec::new();
    let mut seen = BTreeSet::new();
    loop {
        let mut grew = false;
        for record in records {
            if seen.contains(&record.fingerprint) {
                continue;
            }
            let read = record
                .inputs
                .values()
                .flatten()
                .find(|d| tainted.contains(*d));
            if let Some(digest) = read {
                seen.insert(record.fingerprint.clone());
                found.push((record, digest.clone()));
                tainted.extend(record.outputs.values().map(|o| o.digest.clone()));
                grew = true;
            }
        }
        if !grew {
            return found;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::ArtifactType;
    use crate::cache::LockOutput;
    use std::collections::BTreeMap;

    fn record(fp: &str, inputs: &[&str], output: &str) -> RunRecord {
        RunRecord {
            format: 1,
            fingerprint: format!("{fp:0<64}"),
            stage: fp.into(),
            kind: "command".into(),
            inputs: BTreeMap::from([(
                "i".to_string(),
                inputs.iter().map(|s| s.to_string()).collect(),
            )]),
            outputs: BTreeMap::from([(
                "o".to_string(),
                LockOutput {
                    digest: output.into(),
                    ty: ArtifactType::Files,
                    size: 1,
                },
            )]),
            duration_s: 0.0,
            finished_at: 0,
        }
    }

    #[test]
    fn everything_downstream_of_a_damaged_object_is_found_and_nothing_else() {
        // a -> A -> b -> B -> c -> C, and d reads only D (intact). The order of the records
        // is not the order of the chain.
        let records = [
            record("c", &["B"], "C"),
            record("a", &[], "A"),
            record("b", &["A"], "B"),
            record("d", &["D"], "E"),
        ];
        let damaged = BTreeSet::from(["A".to_string()]);
        let mut found: Vec<(String, String)> = derived_from(&records, &damaged)
            .into_iter()
            .map(|(r, d)| (r.stage.clone(), d))
            .collect();
        found.sort();
        assert_eq!(
            found,
            [("b".to_string(), "A".to_string()), ("c".into(), "B".into())]
        );
        assert!(derived_from(&records, &BTreeSet::new()).is_empty());
    }
}
