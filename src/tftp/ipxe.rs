//! Putting the iPXE boot files into the TFTP root (for `isboot init`).
//!
//! Debian's `ipxe` package installs them in /usr/lib/ipxe, some as symlinks into /boot; they
//! are copied (symlinks resolved, since the TFTP server refuses links that leave the root),
//! each through a temporary file and a rename, so a running server never serves half a file.

use std::path::{Path, PathBuf};

/// Where Debian's `ipxe` package puts the binaries.
pub const DEBIAN_IPXE_DIR: &str = "/usr/lib/ipxe";
/// Files stage 1 hands out: BIOS, UEFI, and the UEFI SNP-only alternative.
pub const IPXE_FILES: &[&str] = &["undionly.kpxe", "ipxe.efi", "snponly.efi"];

/// Proxy mode's stage-2 file for iPXE (the DHCP side names it; see
/// `dhcp::BootFiles::proxy_sanboot_script`): an iPXE script that does nothing, so iPXE goes on
/// to SAN-boot the root-path it got beside it.
pub const SANBOOT_SCRIPT_NAME: &str = "isboot-sanboot.ipxe";
/// Its content.
pub const SANBOOT_SCRIPT: &str = "#!ipxe\n\
# isboot (proxyDHCP mode): iPXE needs a boot file in a ProxyDHCP answer.\n\
# This script returns at once; iPXE then boots the SAN disk from root-path.\n";

/// What [`populate_root`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Populated {
    /// Copied (or refreshed) into the root.
    pub copied: Vec<String>,
    /// Not found in the source directory.
    pub missing: Vec<String>,
}

impl Populated {
    /// A sentence for the admin when something is missing, e.g. for `isboot init` to print.
    pub fn advice(&self) -> Option<String> {
        (!self.missing.is_empty()).then(|| {
            format!(
                "iPXE boot files not found: {}. Install them with `apt-get install -y ipxe` \
                 (or copy them into the TFTP root yourself); clients whose NIC ROM is not \
                 already iPXE cannot boot without them.",
                self.missing.join(", ")
            )
        })
    }
}

/// Copy the iPXE binaries from `from` (normally [`DEBIAN_IPXE_DIR`]) into `root`.
pub fn populate_root(root: &Path, from: &Path) -> std::io::Result<Populated> {
    std::fs::create_dir_all(root)?;
    let mut out = Populated::default();
    write_atomically(&root.join(SANBOOT_SCRIPT_NAME), SANBOOT_SCRIPT.as_bytes())?;
    for name in IPXE_FILES {
        let src = from.join(name);
        // metadata() follows symlinks: a dangling link counts as missing.
        match std::fs::metadata(&src) {
            Ok(m) if m.is_file() => {}
            _ => {
                out.missing.push(name.to_string());
                continue;
            }
        }
        let dst = root.join(name);
        let mut tmp = PathBuf::from(&dst);
        tmp.as_mut_os_string().push(".tmp");
        std::fs::copy(&src, &tmp)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &dst)?;
        out.copied.push(name.to_string());
    }
    Ok(out)
}

fn write_atomically(dst: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = PathBuf::from(dst);
    tmp.as_mut_os_string().push(".tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_present_files_and_names_missing_ones() {
        let d = tempfile::tempdir().expect("tmp");
        let from = d.path().join("ipxe");
        std::fs::create_dir(&from).expect("mkdir");
        std::fs::write(d.path().join("real.efi"), b"efi").expect("write");
        std::fs::write(from.join("undionly.kpxe"), b"bios").expect("write");
        std::os::unix::fs::symlink(d.path().join("real.efi"), from.join("ipxe.efi")).expect("link");
        std::os::unix::fs::symlink(d.path().join("gone"), from.join("snponly.efi")).expect("link");
        let root = d.path().join("tftp");
        let p = populate_root(&root, &from).expect("populate");
        assert_eq!(p.copied, vec!["undionly.kpxe", "ipxe.efi"]);
        assert_eq!(p.missing, vec!["snponly.efi"]);
        assert!(
            p.advice()
                .expect("advice")
                .contains("apt-get install -y ipxe")
        );
        assert_eq!(std::fs::read(root.join("ipxe.efi")).expect("read"), b"efi");
        assert!(
            !std::fs::symlink_metadata(root.join("ipxe.efi"))
                .expect("meta")
                .file_type()
                .is_symlink()
        );
        // The copy is servable.
        assert!(crate::tftp::path::open_under_root(&root, "ipxe.efi").is_ok());
        let script = std::fs::read_to_string(root.join(SANBOOT_SCRIPT_NAME)).expect("script");
        assert!(script.starts_with("#!ipxe\n"));
        assert_eq!(
            SANBOOT_SCRIPT_NAME,
            crate::dhcp::config::DEFAULT_PROXY_SANBOOT_SCRIPT
        );
    }
}
