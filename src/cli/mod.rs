//! The `isboot` command line. The only place where errors are reported and turned into exit
//! codes: 0 success, 1 failure, 2 bad arguments.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "isboot",
    version,
    about = "Diskless network-boot server: DHCP, TFTP and an iSCSI target with copy-on-write client disks"
)]
pub struct Cli {
    /// State directory (config, clients, images, overlays, TFTP root).
    #[arg(
        long,
        global = true,
        env = "ISBOOT_STATE_DIR",
        default_value = "/var/lib/isboot"
    )]
    pub state_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve one raw image file as LUN 0 of one iSCSI target, until Ctrl-C.
    Export(ExportArgs),
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Raw image file to serve.
    pub image: PathBuf,
    /// Address and port to listen on.
    #[arg(long, default_value = "127.0.0.1:3260")]
    pub listen: String,
    /// Target name (default iqn.2026-11.org.isboot:<file stem>).
    #[arg(long)]
    pub iqn: Option<String>,
    /// Refuse writes.
    #[arg(long)]
    pub read_only: bool,
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let _ = cli;
    eprintln!("isboot: not built yet");
    ExitCode::from(1)
}
