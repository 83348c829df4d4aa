//! `isboot export IMAGE`: serve one raw image file as LUN 0 of one iSCSI target, in the
//! foreground, until Ctrl-C or SIGTERM.

use super::ExportArgs;
use crate::iscsi::target::{StaticRegistry, TargetConfig, TargetStats};
use crate::scsi::{LogicalUnit, LuIdentity, TargetLus};
use crate::store::raw::RawFile;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

/// Default IQN prefix for exported images.
pub const EXPORT_IQN_PREFIX: &str = "iqn.2026-11.org.isboot";

/// A stable 64-bit id for a name (FNV-1a), used for NAA designators and serials.
pub fn name_id(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.to_ascii_lowercase().bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Turn a file stem into the last part of an IQN: lower case, [a-z0-9.-] only.
pub fn iqn_suffix(stem: &str) -> String {
    let s: String = stem
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if s.is_empty() { "disk".to_owned() } else { s }
}

/// Why `path` must not be exported writable, if it must not: it is read-only on disk (as
/// every published base is, `BASE_MODE`), or a state directory's registry lists it as a
/// version of an image (`<state>/images/NAME/vN.raw`, published before bases were sealed).
fn published_base(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.permissions().mode() & 0o222 == 0 {
        return Some(format!(
            "is read-only on disk (mode {:04o}, as every published isboot base image is)",
            meta.permissions().mode() & 0o7777
        ));
    }
    let root = path.parent()?.parent()?.parent()?;
    let text = std::fs::read_to_string(root.join("registry.toml")).ok()?;
    let reg: crate::config::Registry = toml::from_str(&text).ok()?;
    let listed = reg.images.iter().flat_map(|i| {
        i.versions
            .iter()
            .map(move |v| (i.name.clone(), v.number, root.join(&v.file)))
    });
    for (image, number, file) in listed {
        if let Ok(m) = std::fs::metadata(&file) {
            if (m.dev(), m.ino()) == (meta.dev(), meta.ino()) {
                return Some(format!(
                    "is version {number} of the published isboot image {image} (clients' \
                     overlays depend on it never changing)"
                ));
            }
        }
    }
    None
}

pub fn run(args: &ExportArgs) -> ExitCode {
    super::init_tracing();
    if !args.read_only {
        if let Some(why) = published_base(&args.image) {
            errln!(
                "isboot export: {} {why}: export it read-only (--read-only), or copy it \
                 (cp --sparse=always {} COPY) and export the copy",
                args.image.display(),
                args.image.display()
            );
            return ExitCode::from(1);
        }
    }
    let dev = match RawFile::open(&args.image, args.read_only) {
        Ok(d) => d,
        Err(e) => {
            errln!("isboot export: {e}");
            return ExitCode::from(1);
        }
    };
    let stem = args
        .image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let iqn = args
        .iqn
        .clone()
        .unwrap_or_else(|| format!("{EXPORT_IQN_PREFIX}:{}", iqn_suffix(&stem)));
    let id = name_id(&iqn);
    let ident = LuIdentity {
        vendor: "ISBOOT".into(),
        product: "EXPORT".into(),
        revision: env!("CARGO_PKG_VERSION")
            .chars()
            .filter(|c| *c != '.')
            .take(4)
            .collect(),
        serial: format!("{id:016x}"),
        naa_id: id,
    };
    let size = crate::store::BlockDevice::size(&dev);
    let lu = Arc::new(LogicalUnit::new(Arc::new(dev), ident));
    let target = Arc::new(TargetConfig {
        iqn: iqn.clone(),
        lus: Arc::new(TargetLus::single(lu)),
        allowed_initiators: Vec::new(),
        chap: None,
        listed: true,
        stats: Arc::new(TargetStats::default()),
    });
    let registry = Arc::new(StaticRegistry(vec![target]));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            errln!("isboot export: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(&args.listen).await {
            Ok(l) => l,
            Err(e) => {
                errln!("isboot export: cannot listen on {}: {e}", args.listen);
                return ExitCode::from(1);
            }
        };
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| args.listen.clone());
        errln!(
            "isboot export: serving {} ({} bytes{}) as {} LUN 0 on {} — Ctrl-C to stop",
            args.image.display(),
            size,
            if args.read_only { ", read-only" } else { "" },
            iqn,
            addr
        );
        let limits = crate::config::limits::Limits {
            write_buffer_mib: args.write_buffer_mib,
            max_connections_per_address: args.max_connections_per_address,
            ..Default::default()
        };
        let cfg = crate::service::iscsi::ServerConfig {
            login_timeout: std::time::Duration::from_secs(args.login_timeout.max(1)),
            sendfile_min: args.sendfile_min,
            ..crate::service::iscsi::ServerConfig::with_limits(&limits)
        };
        match crate::service::iscsi::serve_with(listener, registry, cfg, super::shutdown_signal())
            .await
        {
            Ok(()) => {
                errln!("isboot export: stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                errln!("isboot export: {e}");
                ExitCode::from(1)
            }
        }
    })
}
