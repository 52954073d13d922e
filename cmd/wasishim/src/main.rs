//! `wasishim`: installs the wasishim shims on a node (see `wasishim --help`
//! and README.md, "Install on a node").

mod cli;
mod containerd_config;
mod files;
mod flavor;
mod install;
mod record;
mod restart;
mod status;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = cli::parse(&args).and_then(|command| match command {
        cli::Command::Help => {
            print!("{}", cli::USAGE);
            Ok(true)
        }
        cli::Command::Install(o) => install::install(&o).map(|()| true),
        cli::Command::Uninstall(o) => install::uninstall(&o).map(|()| true),
        cli::Command::Status(o) => status::status(&o),
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        // status: something is missing; it said what.
        Ok(false) => ExitCode::from(3),
        Err(e) => {
            eprintln!("wasishim: {e:#}");
            ExitCode::FAILURE
        }
    }
}
