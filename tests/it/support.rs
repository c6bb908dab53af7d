//! A temporary workspace and a way to run `hone` in it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct Workspace {
    dir: tempfile::TempDir,
}

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Runs `cmd` to its end and keeps what it printed.
    pub fn of(cmd: &mut Command) -> Output {
        let out = cmd.output().unwrap();
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `hone run --json` output: stage id -> status word.
    pub fn statuses(&self) -> BTreeMap<String, String> {
        let v: serde_json::Value = serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr)
        });
        v["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["id"].as_str().unwrap().to_string(),
                    s["status"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// The ids with a given status, in run order.
    pub fn with_status(&self, status: &str) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(&self.stdout).unwrap();
        v["stages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["status"] == status)
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    }
}

pub fn hone_bin() -> &'static str {
    env!("CARGO_BIN_EXE_hone")
}

impl Workspace {
    pub fn new() -> Self {
        Workspace {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, content: &str) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(hone_bin());
        cmd.args(args)
            .current_dir(self.root())
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        cmd
    }

    pub fn hone(&self, args: &[&str]) -> Output {
        Output::of(&mut self.command(args))
    }

    /// Runs `hone` and asserts its exit code.
    pub fn ok(&self, args: &[&str]) -> Output {
        let out = self.hone(args);
        assert_eq!(
            out.code, 0,
            "hone {args:?} failed\nstdout:\n{}\nstderr:\n{}",
            out.stdout, out.stderr
        );
        out
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Waits (up to 20 s) until `rel` exists.
    pub fn wait_for(&self, rel: &str) {
        for _ in 0..2000 {
            if self.path(rel).exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("`{rel}` never appeared");
    }
}

/// A linear chain of `n` command stages `s0 -> s1 -> ...`; stage `i` appends
/// `params.tag_i` (default `i`) to its input.
pub fn chain(n: usize, tags: &[(usize, &str)]) -> String {
    let mut spec = String::from(
        "# yaml-language-server: $schema=../schemas/pipeline.schema.json\nname: chain\nseed: 1\nparams:\n",
    );
    for i in 0..n {
        let tag = tags
            .iter()
            .find(|(k, _)| *k == i)
            .map(|(_, t)| t.to_string())
            .unwrap_or(i.to_string());
        spec.push_str(&format!("  tag{i}: \"{tag}\"\n"));
    }
    spec.push_str("stages:\n");
    for i in 0..n {
        spec.push_str(&format!("  s{i}:\n    kind: command\n"));
        if i == 0 {
            spec.push_str("    with:\n      cmd: \"echo ${params.tag0} > ${outputs.out}\"\n      outputs: { out: files }\n");
        } else {
            spec.push_str(&format!(
                "    inputs: {{ prev: s{}.out }}\n    with:\n      cmd: \"cat ${{inputs.prev}} > ${{outputs.out}} && echo ${{params.tag{i}}} >> ${{outputs.out}}\"\n      outputs: {{ out: files }}\n",
                i - 1
            ));
        }
    }
    spec
}

/// A Hugging Face cache holding the example model `hone-examples/qwen2-chat-tiny`, put
/// there by scripts/seed_hf_cache.sh (what README tells a user to run); point
/// `HF_HUB_CACHE` at it.
pub fn seeded_hf_cache() -> tempfile::TempDir {
    let hub = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/seed_hf_cache.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("HF_HUB_CACHE", hub.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    hub
}
