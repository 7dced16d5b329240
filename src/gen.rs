//! `twinfs generate`: hidden commands that write the man page and the shell
//! completions from the CLI definition. `scripts/package.sh` runs them with
//! the binary it just built, so the packaged page always matches the binary.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::CommandFactory as _;

/// What `twinfs generate` writes.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum GenerateCommand {
    /// Write the man pages into DIR: `twinfs.1` and one `twinfs-COMMAND.1`
    /// per command (troff, not compressed).
    Man {
        /// The directory to write into (created if missing).
        dir: PathBuf,
    },
    /// Write the completions for bash (`twinfs.bash`), zsh (`_twinfs`) and
    /// fish (`twinfs.fish`) into DIR.
    Completions {
        /// The directory to write into (created if missing).
        dir: PathBuf,
    },
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

/// Runs one `twinfs generate` command; prints the files written.
pub(crate) fn run(cmd: &GenerateCommand) -> anyhow::Result<ExitCode> {
    let mut cli = crate::Cli::command();
    match cmd {
        GenerateCommand::Man { dir } => {
            create_dir(dir)?;
            // twinfs.1 and one page per command (twinfs-init.1, ...), which
            // twinfs.1 refers to; hidden commands get none.
            clap_mangen::generate_to(cli, dir)
                .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
            println!("{}", dir.join("twinfs.1").display());
        }
        GenerateCommand::Completions { dir } => {
            use clap_complete::Shell;
            create_dir(dir)?;
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                let path = clap_complete::generate_to(shell, &mut cli, "twinfs", dir)
                    .with_context(|| {
                        format!(
                            "cannot write the {shell} completions into {}",
                            dir.display()
                        )
                    })?;
                println!("{}", path.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_man_page_and_completions_without_hidden_commands() {
        let dir = tempfile::tempdir().unwrap();
        run(&GenerateCommand::Man {
            dir: dir.path().to_path_buf(),
        })
        .unwrap();
        run(&GenerateCommand::Completions {
            dir: dir.path().to_path_buf(),
        })
        .unwrap();
        let man = std::fs::read_to_string(dir.path().join("twinfs.1")).unwrap();
        assert!(man.contains(".TH twinfs 1"), "{man}");
        assert!(
            man.contains("twinfs\\-init(1)"),
            "the page lists the init command"
        );
        assert!(!man.contains("generate"), "hidden commands stay hidden");
        let init = std::fs::read_to_string(dir.path().join("twinfs-init.1")).unwrap();
        assert!(init.contains("peer\\-address"), "{init}");
        assert!(!dir.path().join("twinfs-generate.1").exists());
        for (file, marker) in [
            ("twinfs.bash", "complete -F"),
            ("_twinfs", "#compdef twinfs"),
            ("twinfs.fish", "complete -c twinfs"),
        ] {
            let text = std::fs::read_to_string(dir.path().join(file)).unwrap();
            assert!(text.contains(marker), "{file}: {marker} missing");
            assert!(
                text.contains("peer-address"),
                "{file} completes init's flags"
            );
        }
    }
}
