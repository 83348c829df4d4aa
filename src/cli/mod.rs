//! The `isboot` command line. The only place where errors are reported and turned into exit
//! codes: 0 success, 1 failure, 2 bad arguments.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

pub mod export;

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
    /// Seconds a new connection has to complete its login.
    #[arg(long, default_value_t = 15, value_name = "SECS")]
    pub login_timeout: u64,
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
    match &cli.command {
        Command::Export(a) => export::run(a),
    }
}

/// Log to stderr; `RUST_LOG` overrides the default level (info).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
