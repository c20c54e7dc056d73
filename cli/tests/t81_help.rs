//! The command line as a person meets it, through the built binary: `atoll --help` gives every
//! command a line, a command's `--help` opens with what that command does, and `atoll
//! completion SHELL` prints a script.

use std::process::Command;

fn atoll(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_atoll")).args(args).output().expect("run atoll");
    assert!(out.status.success(), "atoll {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[test]
fn every_command_has_a_line_in_the_help_and_its_own_help_says_what_it_does() {
    let help = atoll(&["--help"]);
    let commands: Vec<&str> =
        help.lines().skip_while(|l| *l != "Commands:").skip(1).take_while(|l| !l.trim().is_empty()).collect();
    assert!(commands.len() > 20, "{help}");
    for line in &commands {
        let (name, text) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        assert!(!text.trim().is_empty(), "`{name}` has no text in `atoll --help`:\n{help}");
    }
    for (command, opening) in [
        ("submit", "Submit a pipeline"),
        ("validate", "Check a job spec"),
        ("push", "Upload a directory"),
        ("completion", "Print a shell completion script"),
    ] {
        let text = atoll(&[command, "--help"]);
        assert!(text.starts_with(opening), "`atoll {command} --help` opens with:\n{text}");
    }
}

#[test]
fn completion_scripts_cover_the_commands() {
    for shell in ["bash", "zsh", "fish"] {
        let script = atoll(&["completion", shell]);
        assert!(script.contains("atoll") && script.contains("validate") && script.contains("push"), "{shell}");
    }
}
