//! Which stages a run covers: targets by id (a group's name selects all its copies), with
//! suggestions for unknown names, and the check that their file dependencies exist.

use std::path::Path;

use super::RunError;
use crate::dag::Pipeline;
use crate::spec::diag::did_you_mean;

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
pub(super) fn check_deps(
    pipeline: &Pipeline,
    selected: &[usize],
    workspace: &Path,
) -> Result<(), RunError> {
    let mut missing = Vec::new();
    for &i in selected {
        let stage = &pipeline.spec.stages[i];
        for dep in &stage.signature.deps {
            if let Some(Err(e)) = crate::cache::hf_hub::dep_digest(dep) {
                missing.push(format!("stage `{}`: {e}", stage.id));
            } else if !crate::cache::hf_hub::dep_present(workspace, dep) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(text: &str) -> Pipeline {
        crate::dag::load_str("p.yaml", text.to_string(), &[], crate::stages::kinds())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    const SPEC: &str = "name: p\nstages:\n  prep: {kind: command, with: {cmd: \"true\"}}\n  loop:\n    rounds: 2\n    stages:\n      step: {kind: command, with: {cmd: \"true\"}}\n";

    #[test]
    fn ids_select_stages_and_a_group_stage_name_selects_every_round() {
        let p = pipeline(SPEC);
        let ids = |names: &[&str]| -> Vec<String> {
            let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            stage_indices(&p, &names)
                .unwrap()
                .into_iter()
                .map(|i| p.spec.stages[i].id.clone())
                .collect()
        };
        assert_eq!(ids(&["prep"]), ["prep"]);
        assert_eq!(ids(&["step"]), ["step@1", "step@2"]);
        assert_eq!(ids(&["step@2", "prep"]), ["step@2", "prep"]);
    }

    #[test]
    fn an_unknown_target_is_an_input_error_with_a_suggestion() {
        let p = pipeline(SPEC);
        let err = stage_indices(&p, &["perp".to_string(), "nothing".to_string()]).unwrap_err();
        assert!(err.is_input());
        let text = err.to_string();
        assert!(text.contains("no stage `perp` in pipeline `p`"), "{text}");
        assert!(text.contains("prep"), "suggests the near name: {text}");
        assert!(
            text.contains("no stage `nothing`"),
            "every unknown name: {text}"
        );
    }

    #[test]
    fn missing_file_dependencies_are_named_before_anything_runs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("here.txt"), "x").unwrap();
        let p = pipeline(
            "name: p\nstages:\n  a: {kind: command, with: {cmd: \"true\", deps: [here.txt, gone.txt]}}\n",
        );
        let err = check_deps(&p, &[0], dir.path()).unwrap_err().to_string();
        assert!(err.contains("stage `a` depends on `gone.txt`"), "{err}");
        assert!(!err.contains("here.txt"), "{err}");
    }
}
