//! `wasishim`: installs the wasishim shims on a node and precompiles images
//! (see `wasishim --help` and README.md, "Install on a node").

mod cli;
mod containerd_config;
mod files;
mod flavor;
mod install;
mod precompile;
mod record;
mod restart;
mod status;

use std::process::ExitCode;

fn main() -> ExitCode {
    // The compile worker of `precompile`: this binary, run by itself with
    // its own limits and filter, before anything else.
    if std::env::args_os().nth(1).as_deref() == Some(wasishim_engine::COMPILE_WORKER_ARG.as_ref()) {
        std::process::exit(wasishim_engine::run_compile_worker());
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = cli::parse(&args).and_then(|command| match command {
        cli::Command::Help => {
            print!("{}", cli::USAGE);
            Ok(true)
        }
        cli::Command::Install(o) => install::install(&o).map(|()| true),
        cli::Command::Uninstall(o) => install::uninstall(&o).map(|()| true),
        cli::Command::Status(o) => status::status(&o),
        cli::Command::Precompile(o) => precompile::precompile(&o).map(|()| true),
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
