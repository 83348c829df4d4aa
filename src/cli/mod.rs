//! The `isboot` command line. The only place where errors are reported and turned into exit
//! codes: 0 success, 1 failure, 2 bad arguments.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// `println!` for the CLI's output: see [`out`] (a closed pipe ends the output, not the
/// command).
macro_rules! outln {
    () => {
        $crate::cli::out::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::out::line(format_args!($($arg)*))
    };
}

/// `eprintln!` for the CLI's messages: a closed stderr (`isboot image add … 2>&1 | head -1`)
/// drops the message instead of panicking in the middle of the work.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::out::err_line(format_args!($($arg)*))
    };
}

mod api;
mod commands;
mod export;
mod log;
mod out;
mod prepare;
mod progress;
mod serve;

#[derive(Parser, Debug)]
#[command(
    name = "isboot",
    version,
    about = "Diskless network-boot server: DHCP, TFTP and an iSCSI target with copy-on-write client disks",
    long_about = "Diskless network-boot server: DHCP, TFTP and an iSCSI target with copy-on-write client disks.\n\n\
        Many machines boot one shared, read-only base image; each gets its own writable disk, a\n\
        copy-on-write overlay kept in the state directory. Changes made with these commands take\n\
        effect in a running `isboot serve` within a second, without a restart.",
    after_help = "Getting started:\n  \
        isboot init --server-ip 192.168.50.1/24\n  \
        isboot image add debian debian.qcow2\n  \
        isboot add-client --mac 52:54:00:12:34:56 --image debian --name pc1 --ip 192.168.50.21\n  \
        isboot serve\n  \
        isboot status\n\n\
        Exit status: 0 success, 1 failure, 2 bad arguments."
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
    /// Create the state directory and its commented configuration file.
    Init(InitArgs),
    /// Manage base images: import, list, remove, and maintenance (edit, commit, abort, prune).
    #[command(subcommand)]
    Image(ImageCommand),
    /// Register a diskless client and create its copy-on-write disk.
    #[command(name = "add-client")]
    AddClient(AddClientArgs),
    /// List the registered clients.
    #[command(name = "list-clients")]
    ListClients(JsonArgs),
    /// Show one client's settings, target and disk.
    #[command(name = "show-client")]
    ShowClient(ShowClientArgs),
    /// Turn CHAP on (a generated secret, or --chap-secret-file) or off for a client.
    #[command(name = "set-client")]
    SetClient(SetClientArgs),
    /// Remove a client and (unless --keep-overlay) its disk.
    #[command(name = "remove-client")]
    RemoveClient(RemoveClientArgs),
    /// Drop a client's writes: it gets a fresh disk on the newest version of its image.
    #[command(name = "reset-client")]
    ResetClient(ResetClientArgs),
    /// Choose what a client boots: once (--next), by default (--default), with or without
    /// its boot menu (--menu).
    Boot(BootArgs),
    /// Wake clients up: Wake-on-LAN magic packets on the boot interface ([dhcp] interface), or
    /// to the relay subnet's directed broadcast for a client last seen behind a relay.
    Wake(WakeArgs),
    /// Serve every client's iSCSI target, following changes to the state directory.
    Serve(ServeArgs),
    /// Show each client's session, traffic, disk usage and base version.
    Status(JsonArgs),
    /// Show the live isboot servers sharing this server's Ceph pool (`[store] shared_state`):
    /// each one's iSCSI portal, the client disks it holds and its sessions. Servers that do not
    /// answer within 2 s are not listed (not alive).
    Fleet(JsonArgs),
    /// Serve one raw image file as LUN 0 of one iSCSI target, until Ctrl-C.
    Export(ExportArgs),
    /// Write the man pages (DIR/man/isboot*.1) and bash completion (DIR/bash-completion/isboot)
    /// from this command line's definition; packaging/build-debs runs it.
    #[command(name = "generate-docs", hide = true)]
    GenerateDocs(GenerateDocsArgs),
}

#[derive(clap::Args, Debug)]
pub struct GenerateDocsArgs {
    /// Directory to write man/ and bash-completion/ into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// This server's IPv4 address on the boot network, with its prefix length
    /// (192.168.50.1/24; /24 when left out). Root-paths point at it; client IPs must be in
    /// its subnet.
    #[arg(long, value_name = "IP[/LEN]")]
    pub server_ip: Option<String>,
    /// Prefix of target names: a client's target is <prefix>:<client name>.
    #[arg(long, value_name = "IQN", default_value = crate::config::file::DEFAULT_IQN_PREFIX)]
    pub iqn_prefix: String,
    /// Address and port the iSCSI target listens on (default: --server-ip, port 3260: the
    /// boot network only; 127.0.0.1:3260 without --server-ip).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// Network interface of the boot network: `isboot serve` answers DHCP (and serves TFTP)
    /// there and nowhere else. Needs --server-ip.
    #[arg(long, value_name = "IF")]
    pub interface: Option<String>,
    /// Addresses handed to clients without a reserved IP (full mode), e.g.
    /// 192.168.50.100-192.168.50.200 (default: the upper part of the subnet).
    #[arg(long, value_name = "FIRST-LAST", requires = "interface")]
    pub dhcp_range: Option<String>,
    /// full: isboot owns the subnet's DHCP; proxy: another server hands out addresses and
    /// isboot only answers PXE clients with boot information.
    #[arg(long, value_name = "full|proxy", requires = "interface")]
    pub dhcp_mode: Option<String>,
    /// Default gateway handed to clients (full mode).
    #[arg(long, value_name = "IP", requires = "interface")]
    pub router: Option<std::net::Ipv4Addr>,
    /// DNS server handed to clients (full mode).
    #[arg(long, value_name = "IP", requires = "interface")]
    pub dns: Option<std::net::Ipv4Addr>,
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Import a disk image as a new image (version 1). Raw images are copied; qcow2, VMDK and
    /// VHDX are converted with qemu-img.
    Add(ImageAddArgs),
    /// List images: versions, sizes, and the clients on each version.
    List(JsonArgs),
    /// Remove an image and all its versions (refused while any client uses it).
    Remove(ImageNameArg),
    /// Open maintenance: a writable maintenance target over the newest version, to boot one
    /// machine on and install updates.
    Edit(ImageEditArgs),
    /// Publish the maintenance target's disk as the image's next version.
    Commit(ImageForceArgs),
    /// Rebuild the newest version's initrd for diskless boot (initrd-hooks/isboot-rebuild-initrd:
    /// the isboot dracut module, NIC and iSCSI drivers, kernel command line) and publish the
    /// result as the next version. Needs root.
    Prepare(ImagePrepareArgs),
    /// Close maintenance and drop its writes.
    Abort(ImageForceArgs),
    /// Delete old versions no client uses (an image's newest version is always kept).
    Prune(ImagePruneArgs),
}

#[derive(clap::Args, Debug)]
pub struct ImagePrepareArgs {
    /// Image name.
    pub name: String,
    /// Initrd profile: lean (only what a diskless client needs) or generic (dracut's default).
    #[arg(long, value_parser = ["lean", "generic"])]
    pub profile: Option<String>,
    /// Install missing packages (dracut, open-iscsi, gawk, ...) from the image's own sources.
    #[arg(long)]
    pub install_missing: bool,
}

#[derive(clap::Args, Debug)]
pub struct ImageAddArgs {
    /// Name for the image (letters, digits, '-', '.').
    pub name: String,
    /// Disk image file to import (raw, qcow2, vmdk or vhdx).
    pub file: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct ImageNameArg {
    /// Image name.
    pub name: String,
}

#[derive(clap::Args, Debug)]
pub struct ImageEditArgs {
    /// Image name.
    pub name: String,
    /// MAC of the machine that will boot the maintenance target (DHCP hands it the
    /// maintenance root-path instead of its usual one).
    #[arg(long, value_name = "MAC")]
    pub mac: Option<String>,
    /// An address the maintenance machine logs in from (repeatable), for a machine isboot's
    /// DHCP does not serve. The target always accepts 127.0.0.1 and the --mac machine's lease.
    #[arg(long = "from", value_name = "ADDR")]
    pub from: Vec<std::net::Ipv4Addr>,
    /// Initiator allowed to log in (repeatable; default <prefix>:initiator:maint:<image>).
    #[arg(long = "initiator", value_name = "IQN")]
    pub initiators: Vec<String>,
    /// CHAP with a generated secret for the maintenance target (the default;
    /// secrets/maint-<image>.toml, 0600; DHCP hands it to the --mac machine's iPXE).
    #[arg(long, conflicts_with = "no_chap")]
    pub chap: bool,
    /// No CHAP on the maintenance target: a host at an accepted address (127.0.0.1, --from,
    /// the --mac machine's lease) that states its initiator name can write the next base.
    #[arg(long)]
    pub no_chap: bool,
}

#[derive(clap::Args, Debug)]
pub struct ImageForceArgs {
    /// Image name.
    pub name: String,
    /// Go ahead even while a machine is logged in to the maintenance target (its session ends).
    #[arg(long)]
    pub force: bool,
}

#[derive(clap::Args, Debug)]
pub struct ImagePruneArgs {
    /// Only this image (default: every image).
    pub name: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct AddClientArgs {
    /// The client's MAC address (52:54:00:12:34:56 or 52-54-00-12-34-56).
    #[arg(long, value_name = "MAC")]
    pub mac: String,
    /// Image the client boots (it starts on the image's newest version).
    #[arg(long, value_name = "NAME")]
    pub image: String,
    /// Client name (default: the MAC with dashes). Its target is <prefix>:<name>.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// IPv4 address DHCP gives the client (inside the configured subnet).
    #[arg(long, value_name = "IP")]
    pub ip: Option<String>,
    /// persistent: keep writes across reboots; reset: fresh disk at every power-on.
    #[arg(long, value_enum, default_value_t = ModeArg::Persistent)]
    pub mode: ModeArg,
    /// Initiator allowed to log in (repeatable; default <prefix>:initiator:<name>, which DHCP
    /// hands to iPXE).
    #[arg(long = "initiator", value_name = "IQN")]
    pub initiators: Vec<String>,
    /// Data this client's disk may hold, MiB, instead of `[limits] client_quota_mib`
    /// (0: no quota for this client).
    #[arg(long, value_name = "MIB")]
    pub quota_mib: Option<u64>,
    #[command(flatten)]
    pub chap: ChapArgs,
}

/// A client's CHAP setting (`add-client`, `set-client`).
#[derive(clap::Args, Debug)]
pub struct ChapArgs {
    /// CHAP with a newly generated random secret (add-client's default; read it with
    /// `show-client NAME --show-secrets`); DHCP hands it to the client's iPXE at its next boot.
    #[arg(long, conflicts_with_all = ["no_chap", "chap_secret_file"])]
    pub chap: bool,
    /// Turn CHAP on with your own credentials: a TOML file (mode 0600 or stricter) with
    /// `user`, `secret` (16 to 255 bytes) and optionally `mutual_user`, `mutual_secret`.
    #[arg(long, value_name = "PATH", conflicts_with = "no_chap")]
    pub chap_secret_file: Option<std::path::PathBuf>,
    /// Run this client without CHAP: a host at its address that states its initiator name
    /// can log in to its disk. `status` and `list-clients` list such clients.
    #[arg(long)]
    pub no_chap: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeArg {
    Persistent,
    Reset,
}

#[derive(clap::Args, Debug)]
pub struct JsonArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct ShowClientArgs {
    /// Client name or MAC address.
    pub client: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Also print the CHAP secrets (the only command that does).
    #[arg(long)]
    pub show_secrets: bool,
}

#[derive(clap::Args, Debug)]
pub struct SetClientArgs {
    /// Client name or MAC address.
    pub client: String,
    /// The client's address (IPv4), or `none`: DHCP hands it out in full mode, and in every
    /// mode the client's disk accepts logins from it (say it where isboot's DHCP does not
    /// learn the address: proxy DHCP, static addresses).
    #[arg(long, value_name = "ADDR|none")]
    pub ip: Option<String>,
    /// Data the client's disk may hold, MiB (0: no quota for this client), or `default`:
    /// `[limits] client_quota_mib`. A running server applies it within seconds; writes that
    /// need space past it get SPACE ALLOCATION FAILED.
    #[arg(long, value_name = "MIB|default")]
    pub quota_mib: Option<String>,
    #[command(flatten)]
    pub chap: ChapArgs,
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Choices: disk (the client's own iSCSI disk), image:NAME (another image, on a \
    fresh disk; allow it first with --allow-image NAME), install:NAME (an [[installer]]), memtest, local (the machine's own disk)."
)]
pub struct BootArgs {
    /// Client name or MAC address.
    pub client: String,
    /// Boot this once: cleared when the client's boot script has been served.
    #[arg(long, value_name = "CHOICE")]
    pub next: Option<crate::config::BootAction>,
    /// Boot this from now on (disk unless set).
    #[arg(long, value_name = "CHOICE")]
    pub default: Option<crate::config::BootAction>,
    /// Show the boot menu (its default entry is what the client would boot).
    #[arg(long, value_name = "on|off")]
    pub menu: Option<OnOff>,
    /// Forget every setting first: disk, no menu, no one-shot choice (allowed images stay).
    #[arg(long)]
    pub clear: bool,
    /// Let the client boot this image from its menu (`image:NAME`; repeatable): on its own
    /// disk, with the client's CHAP and addresses, fresh at every power-on.
    #[arg(long, value_name = "NAME")]
    pub allow_image: Vec<String>,
    /// No longer let it boot this image (repeatable); its disk is removed.
    #[arg(long, value_name = "NAME")]
    pub forbid_image: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct WakeArgs {
    /// Client names or MAC addresses.
    #[arg(required_unless_present_any = ["all", "image"], conflicts_with_all = ["all", "image"])]
    pub clients: Vec<String>,
    /// Every client.
    #[arg(long, conflicts_with = "image")]
    pub all: bool,
    /// Every client of this image.
    #[arg(long, value_name = "NAME")]
    pub image: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnOff {
    On,
    Off,
}

#[derive(clap::Args, Debug)]
pub struct RemoveClientArgs {
    /// Client name or MAC address.
    pub client: String,
    /// Keep the client's overlay file (its path is printed).
    #[arg(long)]
    pub keep_overlay: bool,
}

#[derive(clap::Args, Debug)]
pub struct ResetClientArgs {
    /// Client name or MAC address.
    pub client: String,
    /// Reset even while the client is logged in (its session ends first).
    #[arg(long)]
    pub force: bool,
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address and port to listen on (default: `listen` from the config file, else its
    /// server_ip port 3260).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// Address and port of the admin HTTP routes: metrics and status API (default: `listen`
    /// in the config's [http] section, 127.0.0.1:9260).
    #[arg(long, value_name = "ADDR:PORT")]
    pub http_listen: Option<String>,
    /// Do not answer DHCP even though an interface is configured.
    #[arg(long)]
    pub no_dhcp: bool,
    /// Do not serve TFTP even though an interface is configured.
    #[arg(long)]
    pub no_tftp: bool,
    /// Write one CSV line per READ command to FILE as it arrives (µs since the session's
    /// login, session, target, LBA, blocks, initiator queue depth), for `isboot-replay`.
    #[arg(long, value_name = "FILE")]
    pub read_trace: Option<PathBuf>,
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
    /// With --read-only: send Data-In segments of at least BYTES straight from the file with
    /// sendfile(2) instead of copying them into the socket (off by default: on loopback it
    /// costs more CPU than the copy it saves; see benches/RESULTS.md).
    #[arg(long, value_name = "BYTES")]
    pub sendfile_min: Option<usize>,
    /// Write data buffered at once, MiB (as `[limits] write_buffer_mib`; default 1024 or 1/8
    /// of the memory, whichever is smaller; at least 32). Sessions from one address hold at
    /// most a quarter of it (at least 32).
    #[arg(long, value_name = "MIB")]
    pub write_buffer_mib: Option<u64>,
    /// Connections served at once from one peer address (as `[limits]
    /// max_connections_per_address`; default 16).
    #[arg(long, value_name = "N")]
    pub max_connections_per_address: Option<usize>,
}

/// A failed command: its one-line message and whether the command line was at fault.
#[derive(Debug)]
pub enum CliError {
    /// Bad arguments: exit code 2.
    Bad(String),
    /// Anything else: exit code 1.
    Failed(String),
}

impl From<crate::config::ConfigError> for CliError {
    fn from(e: crate::config::ConfigError) -> CliError {
        if e.is_bad_argument() {
            CliError::Bad(e.to_string())
        } else {
            CliError::Failed(e.to_string())
        }
    }
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
    if let Command::Export(args) = &cli.command {
        return export::run(args);
    }
    if let Command::GenerateDocs(args) = &cli.command {
        return match generate_docs(&args.out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                errln!(
                    "isboot: cannot write the docs into {}: {e}",
                    args.out.display()
                );
                ExitCode::from(1)
            }
        };
    }
    let dir = crate::config::StateDir::new(cli.state_dir.clone());
    if let Some(m) = no_access(dir.root()) {
        errln!("isboot: {m}");
        return ExitCode::from(1);
    }
    // What the CLI creates in the state directory stays usable by the service's user and
    // group (`isboot`, whose members run the CLI): group read/write, nothing for others.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o007));
    // A fleet's shared state (`[store] shared_state`): start from the pool's newest. Commands
    // that change the state take its lock and read it again; `serve` follows it.
    if !matches!(cli.command, Command::Init(_) | Command::Serve(_)) && dir.config_path().exists() {
        if let Err(e) = dir.pull_shared() {
            errln!(
                "isboot: warning: {} (showing this server's copy)",
                one_line(&e.to_string())
            );
        }
    }
    let res = match cli.command {
        Command::Init(a) => commands::init(&dir, a),
        Command::Image(c) => commands::image(&dir, c),
        Command::AddClient(a) => commands::add_client(&dir, a),
        Command::ListClients(a) => commands::list_clients(&dir, a.json),
        Command::ShowClient(a) => commands::show_client(&dir, &a.client, a.json, a.show_secrets),
        Command::SetClient(a) => commands::set_client(&dir, a),
        Command::RemoveClient(a) => commands::remove_client(&dir, &a.client, a.keep_overlay),
        Command::ResetClient(a) => commands::reset_client(&dir, &a.client, a.force),
        Command::Boot(a) => commands::boot(&dir, a),
        Command::Wake(a) => commands::wake(&dir, a),
        Command::Serve(a) => serve::run(&dir, &a),
        Command::Status(a) => commands::status(&dir, a.json),
        Command::Fleet(a) => commands::fleet(&dir, a.json),
        Command::Export(_) | Command::GenerateDocs(_) => Ok(()),
    };
    let res = res.and(out::finish().map_err(CliError::Failed));
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Bad(m)) => {
            errln!("isboot: {}", one_line(&m));
            ExitCode::from(2)
        }
        Err(CliError::Failed(m)) => {
            errln!("isboot: {}", one_line(&m));
            ExitCode::from(1)
        }
    }
}

/// One man page per command and subcommand (`isboot.1`, `isboot-serve.1`,
/// `isboot-image-add.1`, ...; hidden commands left out) and the bash completion script, all
/// generated from the clap definition so they cannot drift from `--help`.
fn generate_docs(out: &std::path::Path) -> std::io::Result<()> {
    use clap::CommandFactory;
    let man = out.join("man");
    let completion = out.join("bash-completion");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completion)?;
    clap_mangen::generate_to(Cli::command(), &man)?;
    let mut file = std::fs::File::create(completion.join("isboot"))?;
    clap_complete::generate(
        clap_complete::Shell::Bash,
        &mut Cli::command(),
        "isboot",
        &mut file,
    );
    std::io::Write::flush(&mut file)
}

/// Why this user may not use the state directory `root` at all (it exists, but its files are
/// out of reach: the package's /var/lib/isboot is for root, the user isboot and group isboot).
fn no_access(root: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let probe = std::fs::metadata(root.join("isboot.toml"));
    if !matches!(&probe, Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied) {
        return None;
    }
    let group = std::fs::metadata(root)
        .ok()
        .and_then(|m| group_name(m.gid()))
        .unwrap_or_else(|| "isboot".into());
    Some(format!(
        "permission denied on {}: join group {group} (sudo adduser $USER {group}, then log in again) or run this as root",
        root.display()
    ))
}

/// The name of group `gid` from /etc/group.
fn group_name(gid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        (f.nth(1)?.parse::<u32>().ok()? == gid).then(|| name.to_string())
    })
}

fn one_line(m: &str) -> String {
    m.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Log to stderr; `RUST_LOG` overrides the default level (info). Under systemd (stderr is the
/// journal stream) lines carry their syslog priority and no timestamp: see [`log`].
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if log::stderr_is_journal() {
        builder.event_format(log::JournalFormat::new()).try_init()
    } else {
        builder.try_init()
    };
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
