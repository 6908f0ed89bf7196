//! `tandemd`: runs one tandem node from its configuration file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Runs one tandem firewall node: the DPDK dataplane, the control thread
/// and the local control socket for tandemctl.
#[derive(Parser, Debug)]
#[command(name = "tandemd", version, about)]
struct Args {
    /// The node's configuration file (RON); see config/examples/.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: PathBuf,
    /// Only check the configuration file and exit (0 if valid).
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.check {
        return match tandem_config::load(&args.config) {
            Ok(_) => {
                println!("{}: configuration is valid", args.config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tandemd: {e}");
                ExitCode::from(2)
            }
        };
    }
    match tandem_control::daemon::run(&args.config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandemd: {e}");
            ExitCode::FAILURE
        }
    }
}
