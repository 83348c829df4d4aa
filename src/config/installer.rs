//! `[[installer]]` entries of `isboot.toml`: operating-system installers a client can boot from
//! its menu or as its next/default boot (`isboot boot CLIENT --next install:NAME`). Each is a
//! kernel and an initrd on this server (and optionally an ISO), served over HTTP on the boot
//! routes (`GET /install/<name>/kernel|initrd|iso`), booted with `cmdline` plus the arguments
//! that point the installer at its per-client answer file (`answer`, rendered by
//! `boot::answer` and served only to that client's address). Checked at load: a bad entry is
//! a one-line error naming the entry and the key.

use super::names::ImageName;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Longest kernel command line isboot hands out (Linux's x86 limit is 2048 bytes, and the
/// answer-file arguments come on top).
pub const MAX_CMDLINE: usize = 1024;
/// Longest menu label.
pub const MAX_LABEL: usize = 80;
/// Most template variables (`vars`) per installer, and the longest value.
pub const MAX_VARS: usize = 32;
pub const MAX_VAR_LEN: usize = 1024;

/// The kind of answer file an installer reads, and so the arguments that point it there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnswerKind {
    /// Debian/Ubuntu debian-installer: `preseed.cfg` (`auto=true priority=critical url=...`).
    Preseed,
    /// Red Hat family (CentOS, Rocky, openEuler, Kylin) Anaconda: `ks.cfg` (`inst.ks=...`).
    Kickstart,
    /// Ubuntu Server's subiquity: cloud-init `user-data` and `meta-data`
    /// (`autoinstall ds=nocloud-net;s=...`).
    Autoinstall,
}

impl AnswerKind {
    /// The files this kind serves at `/answer/<mac>/<installer>/<file>`.
    pub fn files(self) -> &'static [&'static str] {
        match self {
            AnswerKind::Preseed => &["preseed.cfg"],
            AnswerKind::Kickstart => &["ks.cfg"],
            AnswerKind::Autoinstall => &["user-data", "meta-data"],
        }
    }
}

impl fmt::Display for AnswerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AnswerKind::Preseed => "preseed",
            AnswerKind::Kickstart => "kickstart",
            AnswerKind::Autoinstall => "autoinstall",
        })
    }
}

/// One `[[installer]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Installer {
    /// Its name in `install:NAME` and in its URLs.
    pub name: ImageName,
    /// What the menu shows (default: the name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Absolute path of the kernel on this server.
    pub kernel: PathBuf,
    /// Absolute path of the initrd on this server.
    pub initrd: PathBuf,
    /// Absolute path of an ISO on this server, served at `/install/<name>/iso` (e.g. for
    /// Ubuntu's `url=`; templates see its URL as `iso_url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iso: Option<PathBuf>,
    /// Kernel command line; the answer-file arguments are added after it.
    #[serde(default)]
    pub cmdline: String,
    /// Which answer file the installer reads (none: no answer file, an interactive install).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<AnswerKind>,
    /// Extra values for the answer-file templates (`vars.NAME`), e.g. `early_command`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, String>,
}

impl Installer {
    pub fn label(&self) -> &str {
        self.label.as_deref().unwrap_or(self.name.as_str())
    }

    /// The file behind `/install/<name>/<what>`.
    pub fn file(&self, what: &str) -> Option<&Path> {
        match what {
            "kernel" => Some(&self.kernel),
            "initrd" => Some(&self.initrd),
            "iso" => self.iso.as_deref(),
            _ => None,
        }
    }

    /// Check one entry; the error is one line naming it.
    fn validate(&self) -> Result<(), String> {
        let n = &self.name;
        let bad = |why: String| Err(format!("[[installer]] {n}: {why}"));
        for (key, p) in [
            ("kernel", Some(&self.kernel)),
            ("initrd", Some(&self.initrd)),
        ]
        .into_iter()
        .chain([("iso", self.iso.as_ref())])
        {
            let Some(p) = p else { continue };
            if !p.is_absolute() || p.to_str().is_none_or(|s| s.chars().any(char::is_control)) {
                return bad(format!(
                    "{key} {:?} must be an absolute path (e.g. /usr/lib/debian-installer/...)",
                    p.display().to_string()
                ));
            }
        }
        // The command line goes into an iPXE script line: nothing that ends the line or
        // expands an iPXE setting (`${...}`).
        if self.cmdline.len() > MAX_CMDLINE
            || self
                .cmdline
                .chars()
                .any(|c| c.is_control() || matches!(c, '$' | '{' | '}'))
        {
            return bad(format!(
                "cmdline must be one line of at most {MAX_CMDLINE} bytes without '$', '{{' or '}}'"
            ));
        }
        if let Some(l) = &self.label {
            if l.is_empty()
                || l.len() > MAX_LABEL
                || l.chars()
                    .any(|c| c.is_control() || matches!(c, '$' | '{' | '}'))
            {
                return bad(format!(
                    "label must be 1 to {MAX_LABEL} bytes on one line without '$', '{{' or '}}'"
                ));
            }
        }
        if self.vars.len() > MAX_VARS {
            return bad(format!("at most {MAX_VARS} vars"));
        }
        for (k, v) in &self.vars {
            let key_ok = !k.is_empty()
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !k.as_bytes()[0].is_ascii_digit();
            if !key_ok {
                return bad(format!(
                    "vars key {k:?}: use letters, digits and '_' (a template variable name)"
                ));
            }
            if v.len() > MAX_VAR_LEN || v.contains(['\n', '\r']) {
                return bad(format!("vars.{k}: one line of at most {MAX_VAR_LEN} bytes"));
            }
        }
        Ok(())
    }
}

/// Check all entries: each valid, names unique.
pub fn validate(all: &[Installer]) -> Result<(), String> {
    for (i, a) in all.iter().enumerate() {
        a.validate()?;
        if all[..i].iter().any(|b| b.name == a.name) {
            return Err(format!(
                "[[installer]] {}: the name is used twice (each installer needs its own name)",
                a.name
            ));
        }
    }
    Ok(())
}

/// Where Debian's `debian-installer-12-netboot-amd64` package puts its text-mode netboot
/// kernel and initrd.
pub const DEBIAN12_NETBOOT_DIR: &str =
    "/usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64";

/// The Debian 12 entry `isboot init` adds when that package is installed.
pub fn debian12(dir: &Path) -> Installer {
    Installer {
        name: "debian12"
            .parse()
            .unwrap_or_else(|_| unreachable!("constant is valid")),
        label: Some("Install Debian 12 (bookworm)".into()),
        kernel: dir.join("linux"),
        initrd: dir.join("initrd.gz"),
        iso: None,
        cmdline: String::new(),
        answer: Some(AnswerKind::Preseed),
        vars: BTreeMap::new(),
    }
}

/// The `[[installer]]` part of the config file: the entries, or a commented example.
pub fn render(all: &[Installer], s: &mut String) {
    s.push_str("\n# Installers a client can boot (from its menu, or `isboot boot CLIENT --next\n");
    s.push_str(
        "# install:NAME`): a kernel and an initrd on this server (absolute paths), served over\n",
    );
    s.push_str(
        "# the boot routes (GET /install/NAME/kernel|initrd|iso, with byte ranges), booted with\n",
    );
    s.push_str(
        "# `cmdline` plus the arguments that point the installer at its answer file. `answer`:\n",
    );
    s.push_str("# \"preseed\" (Debian), \"kickstart\" (CentOS, Rocky, openEuler, Kylin) or \"autoinstall\"\n");
    s.push_str(
        "# (Ubuntu); the file is rendered for each client from a built-in template, or from\n",
    );
    s.push_str(
        "# <state>/templates/NAME/FILE.j2 or <state>/templates/FILE.j2 when present (minijinja;\n",
    );
    s.push_str("# FILE is preseed.cfg, ks.cfg, user-data or meta-data), and served only to that\n");
    s.push_str("# client's own address. Optional keys: label (menu text), iso, vars (a table of\n");
    s.push_str("# strings the templates see as vars.NAME, e.g. early_command for the preseed).\n");
    s.push_str("# The installer ends its one-shot boot with POST /done/<mac> (the built-in\n");
    s.push_str("# templates do it at the end of the install).\n");
    if all.is_empty() {
        s.push_str(
            "# Example: Debian 12 from Debian's debian-installer-12-netboot-amd64 package\n",
        );
        s.push_str("# (isboot init adds it when that package is installed):\n");
        s.push_str("# [[installer]]\n");
        s.push_str("# name = \"debian12\"\n");
        s.push_str("# label = \"Install Debian 12 (bookworm)\"\n");
        s.push_str(&format!("# kernel = \"{DEBIAN12_NETBOOT_DIR}/linux\"\n"));
        s.push_str(&format!(
            "# initrd = \"{DEBIAN12_NETBOOT_DIR}/initrd.gz\"\n"
        ));
        s.push_str("# cmdline = \"console=ttyS0,115200\"\n");
        s.push_str("# answer = \"preseed\"\n");
        return;
    }
    #[derive(Serialize)]
    struct Doc<'a> {
        installer: &'a [Installer],
    }
    s.push_str(&toml::to_string(&Doc { installer: all }).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("isboot.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn entries_parse_render_and_round_trip() {
        let c = Config::default();
        let text = c.render();
        assert!(
            text.contains("# [[installer]]\n# name = \"debian12\"\n"),
            "{text}"
        );
        // The commented example, uncommented, is a valid entry.
        let mut entry = String::from("[[installer]]\n");
        for l in text
            .lines()
            .skip_while(|l| *l != "# [[installer]]")
            .skip(1)
            .take_while(|l| l.starts_with("# ") && l.contains(" = "))
        {
            entry.push_str(&l[2..]);
            entry.push('\n');
        }
        let c = parse(&entry).unwrap();
        assert_eq!(c.installers.len(), 1);
        let d = &c.installers[0];
        assert_eq!(d.name.as_str(), "debian12");
        assert_eq!(d.answer, Some(AnswerKind::Preseed));
        assert_eq!(d.kernel, Path::new(DEBIAN12_NETBOOT_DIR).join("linux"));
        assert_eq!(d.label(), "Install Debian 12 (bookworm)");
        // Rendered back: the entry, not the example, and the same config.
        let text = c.render();
        assert!(
            text.contains("\n[[installer]]\nname = \"debian12\"\n"),
            "{text}"
        );
        assert_eq!(parse(&text).unwrap(), c);

        let mut two = entry.clone();
        two.push_str(
            "\n[[installer]]\nname = \"rocky9\"\nkernel = \"/srv/rocky/vmlinuz\"\ninitrd = \"/srv/rocky/initrd.img\"\niso = \"/srv/rocky/boot.iso\"\nanswer = \"kickstart\"\n[installer.vars]\nearly_command = \"echo hi\"\n",
        );
        let c = parse(&two).unwrap();
        assert_eq!(
            c.installers[1].file("iso"),
            Some(Path::new("/srv/rocky/boot.iso"))
        );
        assert_eq!(c.installers[1].vars["early_command"], "echo hi");
        assert_eq!(c.installers[1].label(), "rocky9");
        assert_eq!(c.installers[0].file("iso"), None);
        assert_eq!(c.installers[0].file("../x"), None);
        assert_eq!(parse(&c.render()).unwrap(), c);
    }

    #[test]
    fn bad_entries_are_one_line_errors() {
        let base = "[[installer]]\nname = \"d\"\nkernel = \"/k\"\ninitrd = \"/i\"\n";
        assert!(parse(base).is_ok());
        for (extra, want) in [
            ("cmdline = \"a ${password}\"\n", "cmdline"),
            ("cmdline = \"a\\nchain http://x\"\n", "cmdline"),
            ("label = \"\"\n", "label"),
            ("answer = \"autoyast\"\n", "unknown variant"),
            (
                "iso = \"boot.iso\"\n",
                "iso \"boot.iso\" must be an absolute path",
            ),
            ("colour = \"red\"\n", "unknown field"),
            ("[installer.vars]\n\"bad-key\" = \"x\"\n", "vars key"),
            ("[installer.vars]\nk = \"a\\nb\"\n", "vars.k"),
        ] {
            let e = parse(&format!("{base}{extra}")).unwrap_err();
            assert!(e.contains(want), "{extra}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let e = parse(&base.replace("\"/k\"", "\"k\"")).unwrap_err();
        assert!(
            e.contains("[[installer]] d: kernel \"k\" must be an absolute path"),
            "{e}"
        );
        let e = parse(&format!("{base}{base}")).unwrap_err();
        assert!(e.contains("used twice"), "{e}");
        let e =
            parse("[[installer]]\nname = \"-x\"\nkernel = \"/k\"\ninitrd = \"/i\"\n").unwrap_err();
        assert!(e.contains("bad image name"), "{e}");
        let e = parse("menu_timeout = -1\n").unwrap_err();
        assert!(!e.contains('\n'), "{e}");
    }
}
