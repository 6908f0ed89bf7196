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
        let checked = tandem_config::load(&args.config)
            .map_err(tandem_control::daemon::DaemonError::from)
            .and_then(|cfg| tandem_control::daemon::node_identity(&cfg, &args.config));
        return match checked {
            Ok(id) => {
                println!("{}: configuration is valid", args.config.display());
                match (&id.model, &id.licence, id.ports) {
                    (Some(model), Some(licence), Some(ports)) => println!(
                        "identity: serial {}, model {model}, licence {licence}, {ports} data ports ({})",
                        id.serial, id.file
                    ),
                    _ => println!(
                        "no identity file at {}: the node runs alone (it cannot create or join a cluster)",
                        id.file
                    ),
                }
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
