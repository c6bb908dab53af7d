//! A stage's fingerprint material: its kind, version, resolved parameters and seed, the
//! digests of the artifacts bound to its inputs, and the digests of its workspace files.
//! Read off the validated pipeline (`dag`) and the digests already known.

use std::collections::BTreeMap;
use std::path::Path;

use super::files::FileCache;
use super::fingerprint::{FORMAT, Fingerprint};
use super::lock::LockOutput;
use crate::dag::Pipeline;

/// The fingerprint material of stage `i`, given its upstream outputs.
pub fn material(
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
        let digest = match super::hf_hub::dep_digest(dep) {
            Some(commit) => commit?,
            None => {
                files
                    .digest(workspace, dep)
                    .map_err(|e| format!("file `{dep}` cannot be read: {e}"))?
                    .hex
            }
        };
        deps.insert(dep.clone(), digest);
    }
    let mut context = BTreeMap::new();
    if stage.kind.observes_context() {
        context.insert("stage".to_string(), serde_json::json!(stage.id));
        context.insert("threads".to_string(), serde_json::json!(stage.threads));
    }
    Ok(Fingerprint {
        format: FORMAT,
        kind: stage.kind.name().to_string(),
        kind_version: stage.kind.version(),
        params: stage.params.resolved().clone(),
        seed: stage.seed,
        inputs,
        deps,
        context,
    })
}

/// Fingerprint material with the given input digests (used to compare a stage whose
/// upstream is stale against its lock entry on everything but its inputs).
pub fn material_with_inputs(
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
