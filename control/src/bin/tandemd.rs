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
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        required_unless_present = "build_info"
    )]
    config: Option<PathBuf>,
    /// Only check the configuration file and exit (0 if valid).
    #[arg(long)]
    check: bool,
    /// The installation slots' root directory (tandem-boot passes it):
    /// updates install into the slot that does not run.
    #[arg(long, value_name = "DIR")]
    slots: Option<PathBuf>,
    /// Print this build's version and K2K protocol version (JSON) and
    /// exit: what a package's manifest must say of it.
    #[arg(long)]
    build_info: bool,
}

fn main() -> ExitCode {
    tandem_control::set_build!();
    let args: Args = tandem_control::build_info::parse_args();
    if args.build_info {
        println!("{}", tandem_control::build_info::json());
        return ExitCode::SUCCESS;
    }
    let Some(config) = args.config else {
        eprintln!("tandemd: --config FILE is required");
        return ExitCode::from(2);
    };
    if args.check {
        let checked = tandem_config::load(&config)
            .map_err(tandem_control::daemon::DaemonError::from)
            .and_then(|cfg| tandem_control::daemon::node_identity(&cfg, &config));
        return match checked {
            Ok(id) => {
                println!("{}: configuration is valid", config.display());
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
    match tandem_control::daemon::run(&config, args.slots.as_deref()) {
        Ok(tandem_control::daemon::Exit::Stopped) => ExitCode::SUCCESS,
        Ok(tandem_control::daemon::Exit::Update) => {
            ExitCode::from(tandem_control::update::EXIT_UPDATE)
        }
        Ok(tandem_control::daemon::Exit::Restart) => {
            // The same program, arguments and pid (a supervisor sees no
            // exit); no descriptor of this run goes to the next one.
            if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
                for fd in fds.flatten() {
                    if let Some(fd) = fd.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) {
                        if fd > 2 {
                            let _ = nix::fcntl::fcntl(
                                fd,
                                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
                            );
                        }
                    }
                }
            }
            use std::os::unix::process::CommandExt;
            let e = std::process::Command::new("/proc/self/exe")
                .args(std::env::args_os().skip(1))
                .exec();
            eprintln!("tandemd: cannot start again after the join: {e}; start it by hand");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("tandemd: {e}");
            ExitCode::FAILURE
        }
    }
}
