//! `command`: a user's own step. A shell command with declared input artifacts,
//! workspace files it depends on, and output paths, cached like any other stage.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Component, Path};
use std::process::Stdio;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Kind, ParamError, Port, Signature, StageContext, StageError};
use crate::artifact::ArtifactType;
use crate::spec::interp::{self, Piece, shell_quote};
use crate::spec::node::PathSeg;

pub struct Command;

/// Parameters of a `command` stage.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandParams {
    /// The command, run by `shell -c` in the workspace root. `${inputs.NAME}` expands to
    /// the (shell-quoted) paths of an input's artifacts, `${outputs.NAME}` to the path the
    /// command must create, `${seed}`, `${threads}` and `${stage}` to those values;
    /// `$${` writes a literal `${`.
    pub cmd: String,
    /// Workspace files or directories the command reads (scripts, data), relative to the
    /// workspace root; their content is part of the cache key.
    #[serde(default)]
    pub deps: Vec<String>,
    /// Declared outputs: name -> artifact type (`files` unless the command writes, say,
    /// a `causal-lm` directory that other stages should accept).
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
    /// Types of inputs the command expects, e.g. `model: causal-lm`: such an input is
    /// required and only accepts artifacts of that type. Inputs not named here take any
    /// artifact.
    #[serde(default)]
    pub input_types: BTreeMap<String, String>,
    /// Extra environment variables; part of the cache key.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The shell that runs `cmd`.
    #[serde(default = "default_shell")]
    pub shell: String,
}

fn default_shell() -> String {
    "sh".to_string()
}

impl Kind for Command {
    const NAME: &'static str = "command";

    /// 2: the stage's id and thread count are part of its key (the command sees both).
    const VERSION: u32 = 2;

    // `${stage}` and `${threads}` in the command, `HONE_STAGE` and `HONE_THREADS` in its
    // environment (and so in any script it runs).
    const OBSERVES_CONTEXT: bool = true;

    const SUMMARY: &'static str =
        "run a shell command with declared inputs, file dependencies and outputs";

    type Params = CommandParams;

    fn signature(
        &self,
        params: &CommandParams,
        input_names: &[&str],
    ) -> Result<Signature, Vec<ParamError>> {
        let mut errors = Vec::new();
        let mut outputs = Vec::new();
        for (name, ty) in &params.outputs {
            let path = vec![PathSeg::Key("outputs".into()), PathSeg::Key(name.clone())];
            if !crate::spec::is_identifier(name) {
                errors.push(ParamError::new(
                    path.clone(),
                    format!("output name `{name}` must be letters, digits, `_` or `-`"),
                ));
            }
            match parse_type(ty, path) {
                Ok(ty) => outputs.push(Port::new(name, ty)),
                Err(e) => errors.push(e),
            }
        }
        let mut inputs = Vec::new();
        for (name, ty) in &params.input_types {
            let path = vec![
                PathSeg::Key("input_types".into()),
                PathSeg::Key(name.clone()),
            ];
            match parse_type(ty, path) {
                Ok(ty) => inputs.push(Port::new(name, ty)),
                Err(e) => errors.push(e),
            }
        }
        for (i, dep) in params.deps.iter().enumerate() {
            if let Err(why) = check_workspace_path(dep) {
                errors.push(ParamError::new(
                    vec![PathSeg::Key("deps".into()), PathSeg::Index(i)],
                    why,
                ));
            }
        }
        for name in params.env.keys() {
            if name.is_empty() || name.contains('=') {
                errors.push(ParamError::new(
                    vec![PathSeg::Key("env".into()), PathSeg::Key(name.clone())],
                    format!("`{name}` is not a valid environment variable name"),
                ));
            }
        }
        let cmd_path = vec![PathSeg::Key("cmd".into())];
        match interp::scan(&params.cmd) {
            Err(at) => errors.push(ParamError::new(
                cmd_path,
                format!("unclosed `${{` at character {at}"),
            )),
            Ok(pieces) => {
                for piece in pieces {
                    let Piece::Var(name, offset) = piece else {
                        continue;
                    };
                    let known: Vec<String> = input_names
                        .iter()
                        .map(|n| format!("inputs.{n}"))
                        .chain(params.outputs.keys().map(|n| format!("outputs.{n}")))
                        .chain(["seed", "threads", "stage"].map(String::from))
                        .collect();
                    if !known.iter().any(|k| k == name) {
                        let mut error = ParamError::new(
                            cmd_path.clone(),
                            format!(
                                "`${{{name}}}` names no input, output or run-time value of this stage"
                            ),
                        );
                        error.help =
                            crate::spec::diag::did_you_mean(name, known.iter().map(String::as_str))
                                .or_else(|| {
                                    Some("write `$${` for a literal `${` (a shell variable)".into())
                                });
                        error.within = Some((offset, name.chars().count() + 3));
                        errors.push(error);
                    }
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Signature {
            inputs,
            open_inputs: true,
            outputs,
            deps: params.deps.clone(),
        })
    }

    fn run(&self, params: &CommandParams, ctx: &StageContext<'_>) -> Result<(), StageError> {
        let script = expand(&params.cmd, ctx)?;
        let log = File::create(ctx.log_path).map_err(|source| StageError::Io {
            context: format!("creating `{}`", ctx.log_path.display()),
            source,
        })?;
        let (reader, writer) = std::io::pipe().map_err(|source| StageError::Io {
            context: "creating a pipe for the command's output".into(),
            source,
        })?;
        let writer_err = writer.try_clone().map_err(|source| StageError::Io {
            context: "creating a pipe for the command's output".into(),
            source,
        })?;
        let mut command = std::process::Command::new(&params.shell);
        command
            .arg("-c")
            .arg(&script)
            .current_dir(ctx.workspace)
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(writer_err)
            .env("HONE_STAGE", ctx.stage_id)
            .env("HONE_SEED", ctx.seed.to_string())
            .env("HONE_THREADS", ctx.threads.to_string())
            .envs(&params.env);
        for (name, paths) in ctx.inputs {
            let joined: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            command.env(format!("HONE_INPUT_{}", env_name(name)), joined.join(":"));
        }
        for (name, path) in ctx.outputs {
            command.env(format!("HONE_OUTPUT_{}", env_name(name)), path);
        }
        isolate(&mut command);
        let spawned = command.spawn();
        // The parent's ends of the pipe close here, so the reader sees its end when the
        // command's tree is done with it.
        drop(command);
        let mut child = spawned.map_err(|source| StageError::Io {
            context: format!("starting `{}`", params.shell),
            source,
        })?;
        let capture = Capture::start(reader, log);
        let mut pause = Duration::from_micros(200);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(source) => {
                    return Err(StageError::Io {
                        context: "waiting for the command".into(),
                        source,
                    });
                }
            }
            if ctx.cancelled() {
                terminate(&mut child);
                capture.finish();
                return Err(StageError::Cancelled);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        };
        let (tail, log_error) = capture.finish();
        if !status.success() {
            let how = match status.code() {
                Some(code) => format!("exited with status {code}"),
                None => "was killed by a signal".to_string(),
            };
            let mut message = if tail.is_empty() {
                format!("command {how}")
            } else {
                format!("command {how}; last lines of its output:\n{tail}")
            };
            if let Some(e) = log_error {
                message.push_str(&format!("\n  (its log could not be written: {e})"));
            }
            return Err(StageError::Failed(message));
        }
        for (name, path) in ctx.outputs {
            if std::fs::symlink_metadata(ctx.workspace.join(path)).is_err() {
                return Err(StageError::Failed(format!(
                    "command succeeded but did not write its declared output `{name}` (expected at `{}`, \
                     the value of `${{outputs.{name}}}`)",
                    path.display()
                )));
            }
        }
        Ok(())
    }
}

fn parse_type(ty: &str, path: Vec<PathSeg>) -> Result<ArtifactType, ParamError> {
    ArtifactType::parse(ty).ok_or_else(|| ParamError {
        path,
        message: format!("unknown artifact type `{ty}`"),
        within: None,
        help: crate::spec::diag::did_you_mean(ty, ArtifactType::NAMES.iter().copied())
            .or_else(|| Some(format!("types: {}", ArtifactType::NAMES.join(", ")))),
    })
}

/// Fills in run-time placeholders; paths are shell-quoted.
fn expand(cmd: &str, ctx: &StageContext<'_>) -> Result<String, StageError> {
    let pieces =
        interp::scan(cmd).map_err(|at| StageError::Failed(format!("unclosed `${{` at {at}")))?;
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Escape => out.push_str("${"),
            Piece::Var("seed", _) => out.push_str(&ctx.seed.to_string()),
            Piece::Var("threads", _) => out.push_str(&ctx.threads.to_string()),
            Piece::Var("stage", _) => out.push_str(&shell_quote(ctx.stage_id)),
            Piece::Var(name, _) => {
                let quoted: Option<Vec<String>> = if let Some(input) = name.strip_prefix("inputs.")
                {
                    ctx.inputs.get(input).map(|paths| {
                        paths
                            .iter()
                            .map(|p| shell_quote(&p.to_string_lossy()))
                            .collect()
                    })
                } else if let Some(output) = name.strip_prefix("outputs.") {
                    ctx.outputs
                        .get(output)
                        .map(|p| vec![shell_quote(&p.to_string_lossy())])
                } else {
                    None
                };
                let quoted = quoted.ok_or_else(|| {
                    StageError::Failed(format!("unknown placeholder `${{{name}}}`"))
                })?;
                out.push_str(&quoted.join(" "));
            }
        }
    }
    Ok(out)
}

fn env_name(port: &str) -> String {
    port.to_ascii_uppercase().replace('-', "_")
}

/// A dependency must name a path inside the workspace, so the cache key means the same on
/// every machine.
fn check_workspace_path(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    if path.is_empty() {
        return Err("empty path".into());
    }
    if p.is_absolute() {
        return Err(format!(
            "`{path}` is absolute; dependencies are paths relative to the workspace root"
        ));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!(
            "`{path}` leaves the workspace (`..`); dependencies must stay inside it"
        ));
    }
    Ok(())
}

/// Runs the child in its own process group (so Ctrl-C and cancellation reach the whole
/// tree) and, on Linux, makes sure that tree dies with hone, however hone dies.
///
/// The kernel's parent-death signal reaches only a direct child, while a command's own
/// children (a pipeline, a background job, a training script's workers) would live on
/// when hone is killed. So the child forks once more before `exec`: the forked process
/// runs the command, and the child itself stays as the group's guardian. It waits for
/// the command and exits with its status; if hone dies first, the kernel signals the
/// guardian (`SIGUSR1`), which kills the whole group.
fn isolate(command: &mut std::process::Command) {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
        #[cfg(target_os = "linux")]
        // SAFETY: the closure runs in the forked child before `exec` and calls only
        // async-signal-safe functions (getppid, fork, prctl, sigaction, kill, waitpid,
        // close_range, _exit); it allocates nothing.
        unsafe {
            command.pre_exec(guard);
        }
    }
}

#[cfg(target_os = "linux")]
extern "C" fn kill_group(_signal: libc::c_int) {
    // SAFETY: kill(2) is async-signal-safe; 0 is the caller's own process group.
    unsafe {
        libc::kill(0, libc::SIGKILL);
    }
}

/// The `pre_exec` hook of [`isolate`]: returns (to `exec`) only in the forked command;
/// the guardian never returns.
#[cfg(target_os = "linux")]
fn guard() -> std::io::Result<()> {
    // SAFETY: see `isolate`.
    unsafe {
        let hone = libc::getppid();
        let command = libc::fork();
        if command < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if command == 0 {
            return Ok(());
        }
        // The guardian holds no descriptor: not the command's output (so readers see
        // its end when the command ends), nor the pipe through which Rust reports a
        // failed exec (so `spawn` returns once the command has started).
        if libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) != 0 {
            // Kernels before 5.9.
            for fd in 0..4096 {
                libc::close(fd);
            }
        }
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = kill_group as *const () as usize;
        libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut());
        // SIGTERM and SIGINT are for the command (hone stops a stage by signalling the
        // group); the guardian stays to report how it ended.
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGUSR1);
        if libc::getppid() != hone {
            // hone died before the parent-death signal was armed.
            kill_group(0);
        }
        let mut status = 0;
        loop {
            let r = libc::waitpid(command, &mut status, 0);
            if r == command {
                break;
            }
            if r < 0 && *libc::__errno_location() != libc::EINTR {
                libc::_exit(127);
            }
        }
        if libc::WIFSIGNALED(status) {
            let signal = libc::WTERMSIG(status);
            libc::signal(signal, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            libc::kill(libc::getpid(), signal);
            libc::_exit(128 + signal);
        }
        libc::_exit(libc::WEXITSTATUS(status));
    }
}

fn terminate(child: &mut std::process::Child) {
    #[cfg(unix)]
    {
        let group = -(child.id() as i32);
        // SAFETY: kill(2) on a process group we created.
        unsafe { libc::kill(group, libc::SIGTERM) };
        for _ in 0..100 {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        unsafe { libc::kill(group, libc::SIGKILL) };
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A command's stdout and stderr, through one pipe: copied to its log and the last
/// [`Capture::KEEP`] bytes kept in memory, so that a failure is explained even when the
/// log cannot be written (a full disk: the command's own "No space left on device" would
/// otherwise be lost with it).
struct Capture {
    state: std::sync::Arc<std::sync::Mutex<Captured>>,
    done: std::sync::mpsc::Receiver<()>,
}

#[derive(Default)]
struct Captured {
    tail: Vec<u8>,
    log_error: Option<std::io::Error>,
}

impl Capture {
    const KEEP: usize = 16 * 1024;
    /// How long to wait for the output's end once the command has exited: a background
    /// job the command left may hold the pipe open.
    const LINGER: Duration = Duration::from_millis(500);

    fn start(mut reader: std::io::PipeReader, mut log: File) -> Capture {
        use std::io::{Read, Write};
        let state = std::sync::Arc::new(std::sync::Mutex::new(Captured::default()));
        let (tx, done) = std::sync::mpsc::channel();
        let shared = state.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                let mut state = shared.lock().expect("capture lock");
                if state.log_error.is_none()
                    && let Err(e) = log.write_all(&buf[..n])
                {
                    state.log_error = Some(e);
                }
                state.tail.extend_from_slice(&buf[..n]);
                if state.tail.len() > 2 * Self::KEEP {
                    let cut = state.tail.len() - Self::KEEP;
                    state.tail.drain(..cut);
                }
            }
            let _ = tx.send(());
        });
        Capture { state, done }
    }

    /// The last lines of the output (at most 20, each quoted `  | `) and the error that
    /// stopped the log, if one did.
    fn finish(self) -> (String, Option<std::io::Error>) {
        let _ = self.done.recv_timeout(Self::LINGER);
        let mut state = self.state.lock().expect("capture lock");
        let text = String::from_utf8_lossy(&state.tail).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(20);
        let tail = lines[start..]
            .iter()
            .map(|l| format!("  | {l}"))
            .collect::<Vec<_>>()
            .join("\n");
        (tail, state.log_error.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::kind::KindDef;
    use serde_json::Value;

    fn errors(params: Value, inputs: &[&str]) -> Vec<String> {
        match Command.configure(&params, inputs) {
            Ok(_) => Vec::new(),
            Err(errs) => errs.into_iter().map(|e| e.message).collect(),
        }
    }

    #[test]
    fn placeholders_must_name_ports() {
        assert!(errors(serde_json::json!({"cmd": "cp ${inputs.a} ${outputs.b}", "outputs": {"b": "files"}}), &["a"]).is_empty());
        assert_eq!(
            errors(
                serde_json::json!({"cmd": "cp ${inputs.x} ${outputs.b} $HOME $${HOME}", "outputs": {"b": "files"}}),
                &["a"]
            ),
            vec!["`${inputs.x}` names no input, output or run-time value of this stage"]
        );
    }

    #[test]
    fn deps_stay_inside_the_workspace() {
        assert_eq!(
            errors(
                serde_json::json!({"cmd": "true", "deps": ["../x", "/etc/passwd", "ok/file"]}),
                &[]
            )
            .len(),
            2
        );
    }

    #[test]
    fn output_types_are_checked() {
        assert_eq!(
            errors(
                serde_json::json!({"cmd": "true", "outputs": {"m": "causal_lm"}}),
                &[]
            ),
            vec!["unknown artifact type `causal_lm`"]
        );
    }

    #[test]
    fn shell_quoting_keeps_plain_paths_plain() {
        assert_eq!(shell_quote(".hone/objects/ab/cd"), ".hone/objects/ab/cd");
        assert_eq!(shell_quote("it's here"), r"'it'\''s here'");
    }
}
