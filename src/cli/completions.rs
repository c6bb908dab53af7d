//! `hone completions SHELL`: a completion script for bash, zsh, fish, elvish or
//! PowerShell, generated from the same clap definitions as the commands themselves.

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::{Cli, CliError};

#[derive(Debug, Args)]
#[command(after_help = "Install, for example:\n  \
    bash: hone completions bash > ~/.local/share/bash-completion/completions/hone\n  \
    zsh:  hone completions zsh > ~/.zfunc/_hone   (with `fpath+=~/.zfunc` before compinit)\n  \
    fish: hone completions fish > ~/.config/fish/completions/hone.fish")]
pub struct CompletionsArgs {
    /// The shell to write completions for.
    #[arg(value_enum)]
    pub shell: Shell,
}

pub fn run(args: CompletionsArgs) -> Result<u8, CliError> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "hone", &mut script);
    super::out(&String::from_utf8_lossy(&script));
    Ok(0)
}
