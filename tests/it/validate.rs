//! `hone validate` on every invalid fixture (rendered errors snapshotted, exit code 2),
//! on every shipped pipeline, and the freshness of the generated schema.

use std::path::Path;

use crate::support::Workspace;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_invalid_fixture_is_rejected_with_its_snapshotted_message() {
    let dir = repo().join("tests/fixtures/invalid");
    let mut fixtures: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    fixtures.sort();
    assert!(
        fixtures.len() >= 12,
        "fixtures missing from {}",
        dir.display()
    );
    let ws = Workspace::new();
    for fixture in fixtures {
        let name = fixture.file_stem().unwrap().to_string_lossy().into_owned();
        let rel = format!("tests/fixtures/invalid/{name}.yaml");
        ws.write(&rel, &std::fs::read_to_string(&fixture).unwrap());
        let out = ws.hone(&["validate", &rel]);
        assert_eq!(out.code, 2, "{name}: expected exit 2\n{}", out.stderr);
        assert!(
            out.stdout.is_empty(),
            "{name}: nothing on stdout, got {}",
            out.stdout
        );
        insta::assert_snapshot!(name, out.stderr);
    }
}

#[test]
fn override_errors_name_the_override_and_suggest() {
    let ws = Workspace::new();
    ws.write("p.yaml", "name: p\nparams: { learning_rate: 0.1 }\nstages:\n  train: { kind: command, with: { cmd: \"true\" } }\n");
    let out = ws.hone(&[
        "validate",
        "p.yaml",
        "-S",
        "params.learning_rat=1",
        "-S",
        "trian.with.cmd=x",
        "-S",
        "oops",
    ]);
    assert_eq!(out.code, 2);
    insta::assert_snapshot!("override_errors", out.stderr);
}

#[test]
fn overrides_are_typed_and_reach_the_stage() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        "name: p\nparams: { n: 2 }\nstages:\n  a:\n    kind: command\n    with: { cmd: \"echo ${params.n} > ${outputs.o}\", outputs: { o: files }, env: { N: \"x\" } }\n",
    );
    // Values are read as YAML scalars: quotes make a string of what would be a number.
    ws.ok(&[
        "run",
        "p.yaml",
        "-S",
        "params.n=5",
        "-S",
        "a.with.env.N=\"7\"",
        "-q",
    ]);
    let lock = ws.read("p.lock");
    assert!(lock.contains("cmd: \"echo 5 > ${outputs.o}\""), "{lock}");
    assert!(lock.contains("N: \"7\""), "{lock}");
    // A number where a string is required is a type error, reported at the override.
    let out = ws.hone(&["validate", "p.yaml", "-S", "a.with.env.N=7"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr
            .contains("command line override (`stages.a.with.env.N`)"),
        "{}",
        out.stderr
    );
}

#[test]
fn every_shipped_pipeline_validates_and_declares_the_schema() {
    let specs = shipped_specs();
    assert!(!specs.is_empty());
    for spec in specs {
        let text = std::fs::read_to_string(&spec).unwrap();
        assert!(
            text.starts_with("# yaml-language-server: $schema="),
            "{} should start with the yaml-language-server comment",
            spec.display()
        );
        if text.contains("source: hf, model:") {
            // A model id resolves in the Hugging Face cache while the spec is validated:
            // these validate as a user's would, after scripts/seed_hf_cache.sh.
            let hub = crate::support::seeded_hf_cache();
            let out = std::process::Command::new(crate::support::hone_bin())
                .arg("validate")
                .arg(&spec)
                .env("HF_HUB_CACHE", hub.path())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{} is invalid:\n{}",
                spec.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        } else if let Err(err) = hone::dag::load(&spec, &[], hone::stages::kinds()) {
            panic!("{} is invalid:\n{err}", spec.display());
        }
    }
}

/// The shipped specs, every `*.yaml` under pipelines/.
fn shipped_specs() -> Vec<std::path::PathBuf> {
    let mut specs = Vec::new();
    let mut stack = vec![repo().join("pipelines")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                specs.push(path);
            }
        }
    }
    specs.sort();
    specs
}

fn pipeline_schema() -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(repo().join("schemas/pipeline.schema.json")).unwrap(),
    )
    .unwrap()
}

/// What an editor does: the spec read as YAML 1.2 and checked against the committed
/// schema by a standard validator. Placeholders (`${params.x}`) must be accepted where
/// a number or an enum stands, ranges must hold.
#[test]
fn every_shipped_pipeline_satisfies_the_committed_schema() {
    let validator = jsonschema::validator_for(&pipeline_schema()).expect("the schema compiles");
    let specs = shipped_specs();
    assert!(specs.len() >= 13, "{specs:?}");
    for spec in specs {
        let text = std::fs::read_to_string(&spec).unwrap();
        let value = hone::spec::load::parse(&text).unwrap().to_json();
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{}:\n{}",
            spec.display(),
            errors.join("\n")
        );
    }
}

/// And the schema refuses what validation refuses: a count of 0, a negative learning
/// rate, a probability above 1, an unknown enum value; a placeholder only as a whole value.
#[test]
fn the_schema_flags_out_of_range_parameters() {
    let validator = jsonschema::validator_for(&pipeline_schema()).unwrap();
    let spec = |with: serde_json::Value| serde_json::json!({"name": "p", "stages": {"s": {"kind": "ppo", "with": with}}});
    for bad in [
        serde_json::json!({"iterations": 0}),
        serde_json::json!({"lr": -1.0}),
        serde_json::json!({"gamma": 1.5}),
        serde_json::json!({"baseline": "nonsense"}),
        serde_json::json!({"iterations": "20 ${params.x}"}),
    ] {
        assert!(!validator.is_valid(&spec(bad.clone())), "accepted {bad}");
    }
    for good in [
        serde_json::json!({"iterations": 20, "lr": 1e-4, "gamma": 1.0}),
        serde_json::json!({"iterations": "${params.iterations}", "baseline": "${item.baseline}"}),
    ] {
        assert!(validator.is_valid(&spec(good.clone())), "refused {good}");
    }
}

/// What ajv's strict mode refuses: a keyword JSON Schema does not define, or a `format`
/// it does not define (schemars writes `uint`, `double` and the like).
#[test]
fn the_schema_uses_only_standard_keywords_and_formats() {
    const KEYWORDS: &[&str] = &[
        "$schema",
        "$id",
        "$ref",
        "$defs",
        "$comment",
        "$anchor",
        "$dynamicRef",
        "$dynamicAnchor",
        "title",
        "description",
        "default",
        "examples",
        "deprecated",
        "readOnly",
        "writeOnly",
        "type",
        "enum",
        "const",
        "multipleOf",
        "maximum",
        "exclusiveMaximum",
        "minimum",
        "exclusiveMinimum",
        "maxLength",
        "minLength",
        "pattern",
        "maxItems",
        "minItems",
        "uniqueItems",
        "maxContains",
        "minContains",
        "maxProperties",
        "minProperties",
        "required",
        "dependentRequired",
        "properties",
        "patternProperties",
        "additionalProperties",
        "propertyNames",
        "items",
        "prefixItems",
        "contains",
        "allOf",
        "anyOf",
        "oneOf",
        "not",
        "if",
        "then",
        "else",
        "dependentSchemas",
        "unevaluatedItems",
        "unevaluatedProperties",
        "format",
    ];
    const FORMATS: &[&str] = hone::spec::schema::STANDARD_FORMATS;
    // Keys whose values are maps of names to schemas, not schemas.
    const MAPS: &[&str] = &[
        "properties",
        "patternProperties",
        "$defs",
        "dependentSchemas",
    ];
    fn walk(schema: &serde_json::Value, at: &str, problems: &mut Vec<String>) {
        let Some(map) = schema.as_object() else {
            return;
        };
        for (key, value) in map {
            let here = format!("{at}/{key}");
            if !KEYWORDS.contains(&key.as_str()) {
                problems.push(format!("{here}: unknown keyword"));
            }
            if key == "format" && !value.as_str().is_some_and(|f| FORMATS.contains(&f)) {
                problems.push(format!("{here}: non-standard format {value}"));
            }
            match (key.as_str(), value) {
                (k, serde_json::Value::Object(children)) if MAPS.contains(&k) => {
                    for (name, child) in children {
                        walk(child, &format!("{here}/{name}"), problems);
                    }
                }
                ("enum" | "const" | "default" | "examples" | "required", _) => {}
                (_, serde_json::Value::Object(_)) => walk(value, &here, problems),
                (_, serde_json::Value::Array(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        walk(item, &format!("{here}/{i}"), problems);
                    }
                }
                _ => {}
            }
        }
    }
    let mut problems = Vec::new();
    walk(&pipeline_schema(), "#", &mut problems);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn committed_schemas_are_fresh() {
    for (rel, text) in hone::cli::schema::generated() {
        let committed =
            std::fs::read_to_string(repo().join("schemas").join(&rel)).unwrap_or_default();
        assert!(
            committed == text,
            "schemas/{rel} is stale: run `cargo run -- schema` and commit it"
        );
    }
}

#[test]
fn plan_renders_text_dot_and_mermaid() {
    let ws = Workspace::new();
    ws.write("p.yaml", &crate::support::chain(3, &[]));
    let text = ws.ok(&["plan", "p.yaml"]).stdout;
    assert!(text.contains("3. s2 (command)  [prev <- s1.out]"), "{text}");
    let dot = ws.ok(&["plan", "p.yaml", "--format", "dot"]).stdout;
    assert!(
        dot.contains("\"s0\" -> \"s1\";") && dot.contains("\"s1\" -> \"s2\";"),
        "{dot}"
    );
    let mermaid = ws.ok(&["plan", "p.yaml", "--format", "mermaid"]).stdout;
    assert!(
        mermaid.starts_with("flowchart LR") && mermaid.contains("s1 --> s2"),
        "{mermaid}"
    );
    // Targets select a stage and its ancestors only.
    let only = ws.ok(&["plan", "p.yaml", "s1"]).stdout;
    assert!(only.contains("s1") && !only.contains("s2"), "{only}");
}

#[test]
fn usage_errors_exit_2() {
    let ws = Workspace::new();
    assert_eq!(ws.hone(&["run", "--no-such-flag"]).code, 2);
    let out = ws.hone(&["run"]);
    assert_eq!(out.code, 2, "no spec here: {}", out.stderr);
    assert!(out.stderr.contains("no spec given"), "{}", out.stderr);
    ws.write("p.yaml", &crate::support::chain(2, &[]));
    let out = ws.hone(&["run", "p.yaml", "s9"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("no stage `s9`")
            && out.stderr.contains("did you mean `s0`?")
                | out.stderr.contains("did you mean `s1`?"),
        "{}",
        out.stderr
    );
}

#[test]
fn rounds_unroll_with_carried_inputs() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        r#"name: online
stages:
  base:
    kind: command
    with: { cmd: "echo base > ${outputs.model}", outputs: { model: files } }
  online:
    rounds: 3
    carry: { policy: base.model, history: [base.model] }
    next: { policy: ppo.model, history: ["${carry.history}", ppo.model] }
    stages:
      gen:
        kind: command
        inputs: { policy: "${carry.policy}" }
        with: { cmd: "cat ${inputs.policy} > ${outputs.samples}; echo gen ${round} >> ${outputs.samples}", outputs: { samples: files } }
      ppo:
        kind: command
        inputs: { samples: gen.samples, history: "${carry.history}" }
        with: { cmd: "cat ${inputs.samples} > ${outputs.model}; echo ppo ${round} after ${prev} >> ${outputs.model}", outputs: { model: files } }
"#,
    );
    let plan = ws.ok(&["plan", "p.yaml"]).stdout;
    assert!(
        plan.contains("gen@2 (command)  [policy <- ppo@1.model]"),
        "{plan}"
    );
    assert!(plan.contains("ppo@3 (command)  [history <- base.model, history <- ppo@1.model, history <- ppo@2.model, samples <- gen@3.samples]"), "{plan}");
    ws.ok(&["run", "p.yaml", "-q"]);
    let out = ws.ok(&["show", "p.yaml", "ppo@3.model", "--json"]).stdout;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let path = v["outputs"][0]["path"].as_str().unwrap();
    assert_eq!(
        ws.read(path),
        "base\ngen 1\nppo 1 after 0\ngen 2\nppo 2 after 1\ngen 3\nppo 3 after 2\n"
    );
}

#[test]
fn a_matrix_unrolls_every_combination_and_star_collects_them() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        r#"name: sweep
stages:
  sweep:
    matrix: { method: [d-optimal, uniform], seed: [1, 2, 3] }
    stages:
      cell:
        kind: command
        with: { cmd: "echo ${item.method} ${item.seed} ${round} > ${outputs.out}", outputs: { out: files } }
  all:
    kind: command
    inputs: { runs: cell@*.out }
    with: { cmd: "cat ${inputs.runs} > ${outputs.out}", outputs: { out: files } }
"#,
    );
    let plan = ws.ok(&["plan", "p.yaml"]).stdout;
    assert!(plan.contains("cell@d-optimal_1 (command)"), "{plan}");
    assert!(plan.contains("cell@uniform_3 (command)"), "{plan}");
    ws.ok(&["run", "p.yaml", "-q"]);
    let out = ws.ok(&["show", "p.yaml", "all.out", "--json"]).stdout;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        ws.read(v["outputs"][0]["path"].as_str().unwrap()),
        "d-optimal 1 1\nd-optimal 2 2\nd-optimal 3 3\nuniform 1 4\nuniform 2 5\nuniform 3 6\n",
        "every combination, in the order written, collected in round order"
    );
    // A misspelt matrix name and a star that matches nothing are errors with a place.
    ws.write(
        "p.yaml",
        &ws.read("p.yaml")
            .replace("${item.method}", "${item.methd}")
            .replace("cell@*", "cel@*"),
    );
    let out = ws.hone(&["validate", "p.yaml"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("the matrix has no `methd`")
            && out.stderr.contains("did you mean `method`?")
            && out.stderr.contains("`cel@*` matches no stage")
            && out.stderr.contains("p.yaml:11:"),
        "{}",
        out.stderr
    );
}

#[test]
fn rounds_inside_a_matrix_restart_the_carry_for_each_combination() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        r#"name: online-sweep
stages:
  start:
    foreach: [1, 2]
    stages:
      init:
        kind: command
        with: { cmd: "echo init ${item} > ${outputs.model}", outputs: { model: files } }
  online:
    matrix: { method: [a, b], seed: [1, 2] }
    rounds: 2
    carry: { model: "init@${item.seed}.model" }
    next: { model: step.model }
    stages:
      step:
        kind: command
        inputs: { model: "${carry.model}" }
        with: { cmd: "cat ${inputs.model} > ${outputs.model}; echo ${item.method} round ${round} >> ${outputs.model}", outputs: { model: files } }
  all:
    kind: command
    inputs: { runs: step@*.model }
    with: { cmd: "cat ${inputs.runs} > ${outputs.out}", outputs: { out: files } }
"#,
    );
    let plan = ws.ok(&["plan", "p.yaml"]).stdout;
    assert!(
        plan.contains("step@a_2_r1 (command)  [model <- init@2.model]"),
        "{plan}"
    );
    assert!(
        plan.contains("step@b_1_r2 (command)  [model <- step@b_1_r1.model]"),
        "{plan}"
    );
    ws.ok(&["run", "p.yaml", "-q"]);
    let out = ws
        .ok(&["show", "p.yaml", "step@b_2_r2.model", "--json"])
        .stdout;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        ws.read(v["outputs"][0]["path"].as_str().unwrap()),
        "init 2\nb round 1\nb round 2\n"
    );
    let out = ws.ok(&["show", "p.yaml", "all.out", "--json"]).stdout;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        ws.read(v["outputs"][0]["path"].as_str().unwrap())
            .lines()
            .count(),
        4 * (2 + 3),
        "eight copies: two lines after a first round, three after a second"
    );
    // A mistake in the carried inputs is reported once, not once per combination.
    let good = ws.read("p.yaml");
    ws.write(
        "p.yaml",
        &good.replace("init@${item.seed}", "init@${item.sed}"),
    );
    let out = ws.hone(&["validate", "p.yaml"]);
    assert_eq!(out.code, 2);
    assert_eq!(
        out.stderr.matches("the matrix has no `sed`").count(),
        1,
        "{}",
        out.stderr
    );
    ws.write("p.yaml", &good);
    // `foreach` and `matrix` together are still an error.
    ws.write(
        "p.yaml",
        &ws.read("p.yaml")
            .replace("    rounds: 2\n", "    foreach: [x]\n"),
    );
    let out = ws.hone(&["validate", "p.yaml"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("not both"), "{}", out.stderr);
}

#[test]
fn matrix_values_may_be_mappings_named_by_their_id() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        r#"name: levels
stages:
  sweep:
    matrix: { level: [{ id: 1, kl: 0.5 }, { id: low, kl: 2 }] }
    stages:
      cell:
        kind: command
        with: { cmd: "echo ${item.level.kl} > ${outputs.out}", outputs: { out: files } }
  all:
    kind: command
    inputs: { runs: cell@*.out }
    with: { cmd: "cat ${inputs.runs} > ${outputs.out}", outputs: { out: files } }
"#,
    );
    let plan = ws.ok(&["plan", "p.yaml"]).stdout;
    assert!(
        plan.contains("cell@1 (command)") && plan.contains("cell@low (command)"),
        "{plan}"
    );
    // A mapping without a usable id is one error; `cell@*` adds none of its own.
    ws.write(
        "p.yaml",
        &ws.read("p.yaml")
            .replace("{ id: 1, kl: 0.5 }", "{ kl: 0.5 }"),
    );
    let out = ws.hone(&["validate", "p.yaml"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("or mappings with such an `id`"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("matches no stage"), "{}", out.stderr);
}

/// Hostile specs are answered with exit 2 and a message, quickly: deep nesting (which
/// overflowed the stack, exit 134) and a "billion laughs" alias bomb (which took 19 s and
/// 5.9 GB).
#[test]
fn hostile_yaml_is_refused_with_exit_2() {
    let ws = Workspace::new();
    ws.write(
        "d.yaml",
        &format!("name: x\nstages: {{}}\nb:\n  {}1\n", "- ".repeat(50_000)),
    );
    let out = ws.hone(&["validate", "d.yaml"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("deeper than 128 levels"),
        "{}",
        out.stderr
    );
    // The quoted line is a window, not 100 KB.
    assert!(out.stderr.len() < 2_000, "{} bytes", out.stderr.len());

    let mut bomb = String::from("name: x\nstages: {}\na0: &a0 [x, x, x, x, x, x, x, x, x]\n");
    for level in 1..9 {
        let prev = format!("*a{}", level - 1);
        bomb.push_str(&format!(
            "a{level}: &a{level} [{}]\n",
            [prev.as_str(); 9].join(", ")
        ));
    }
    ws.write("bomb.yaml", &bomb);
    let out = ws.hone(&["validate", "bomb.yaml"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("alias bomb"), "{}", out.stderr);
}
