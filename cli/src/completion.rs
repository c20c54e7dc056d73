//! `atoll completion SHELL`: the shell completion script for every command and flag, generated
//! from the same definitions that parse the command line (so it cannot drift from them).

use std::io::Write;

use anyhow::Context;
use clap::CommandFactory;

use crate::args::Args;
use crate::args::Shell;

/// The completion script for `shell`.
pub fn script(shell: Shell) -> Vec<u8> {
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(generator, &mut visible_commands(), "atoll", &mut out);
    out
}

/// The command line without its hidden commands (`atoll pod ...` is run by a helper image,
/// never typed), which the generators would offer otherwise.
fn visible_commands() -> clap::Command {
    let full = Args::command();
    clap::Command::new("atoll")
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|c| !c.is_hide_set()).cloned())
}

/// Print the script on stdout, in one piece; a reader that stops early (`| head`) is no error.
pub fn print(shell: Shell) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(&script(shell)).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => written.context("writing the completion script"),
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::*;

    #[test]
    fn every_shell_gets_a_script_naming_the_commands() {
        for shell in Shell::value_variants() {
            let text = String::from_utf8(script(*shell)).unwrap();
            for word in ["atoll", "validate", "submit", "push", "completion", "offline", "log-level"] {
                assert!(text.contains(word), "{shell:?} script lacks {word:?}");
            }
            assert!(!text.contains("pod"), "{shell:?} script offers the hidden `pod` command");
        }
    }
}
