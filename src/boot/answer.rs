//! Installers' answer files (Debian preseed, Red Hat-family kickstart, Ubuntu autoinstall),
//! rendered per client with minijinja, sans-IO: the service reads an admin's template (or
//! takes the built-in one) and serves the result only to the client's own address.
//!
//! Templates see: `client` (name, also the host name), `mac`, `ip` (the address the request
//! came from), `target` (the client's iSCSI target name), `server` (`ADDR:PORT` of the boot
//! routes), `installer`, `answer_url` (this installer's answer directory for this client),
//! `done_url` (POST it to end a one-shot install), `kernel_url`, `initrd_url`, `iso_url` (only
//! when the installer has an ISO), and `vars` (the installer's `vars` table). Undefined
//! variables are errors (strict), so a typo in a template is a 500 naming it, not a silently
//! empty answer. No secret is ever in the context: CHAP stays with iPXE's DHCP settings.

use crate::config::AnswerKind;
use minijinja::{Environment, UndefinedBehavior, Value};
use serde::Serialize;
use std::collections::BTreeMap;

/// Longest template isboot reads (an admin's file under `<state>/templates/`).
pub const MAX_TEMPLATE: u64 = 256 * 1024;
/// Longest answer file rendered (a loop in a template cannot make more).
pub const MAX_ANSWER: usize = 1024 * 1024;

/// Built-in Debian preseed: an unattended install onto the first local disk, calling back
/// `done_url` at the end; `vars.early_command` runs first (e.g. the lab's marker).
pub const PRESEED: &str = include_str!("templates/preseed.cfg.j2");
/// Built-in kickstart (CentOS, Rocky, openEuler, Kylin).
pub const KICKSTART: &str = include_str!("templates/ks.cfg.j2");
/// Built-in Ubuntu autoinstall (cloud-init NoCloud `user-data` and `meta-data`).
pub const USER_DATA: &str = include_str!("templates/user-data.j2");
pub const META_DATA: &str = include_str!("templates/meta-data.j2");

/// The built-in template of an answer file, when `kind` serves `file`.
pub fn builtin(kind: AnswerKind, file: &str) -> Option<&'static str> {
    match (kind, file) {
        (AnswerKind::Preseed, "preseed.cfg") => Some(PRESEED),
        (AnswerKind::Kickstart, "ks.cfg") => Some(KICKSTART),
        (AnswerKind::Autoinstall, "user-data") => Some(USER_DATA),
        (AnswerKind::Autoinstall, "meta-data") => Some(META_DATA),
        _ => None,
    }
}

/// The kernel arguments that point an installer of `kind` at its answer files in
/// `answer_url` (no trailing slash).
pub fn kernel_args(kind: AnswerKind, answer_url: &str, iso_url: Option<&str>) -> String {
    match kind {
        AnswerKind::Preseed => {
            format!("auto=true priority=critical interface=auto url={answer_url}/preseed.cfg")
        }
        AnswerKind::Kickstart => format!("ip=dhcp inst.ks={answer_url}/ks.cfg"),
        AnswerKind::Autoinstall => {
            let iso = iso_url.map(|u| format!(" url={u}")).unwrap_or_default();
            format!("ip=dhcp{iso} autoinstall ds=nocloud-net;s={answer_url}/")
        }
    }
}

/// What a template sees (see the module doc).
#[derive(Debug, Clone, Serialize)]
pub struct AnswerContext<'a> {
    pub client: &'a str,
    pub mac: String,
    pub ip: String,
    pub target: &'a str,
    pub server: String,
    pub installer: &'a str,
    pub answer_url: String,
    pub done_url: String,
    pub kernel_url: String,
    pub initrd_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iso_url: Option<String>,
    pub vars: &'a BTreeMap<String, String>,
}

impl<'a> AnswerContext<'a> {
    /// Client pc1 (52:54:00:00:00:01 at 10.0.0.21) installing `debian12` from 10.0.0.1:9261:
    /// for tests and benches.
    pub fn example(vars: &'a BTreeMap<String, String>) -> AnswerContext<'a> {
        AnswerContext {
            client: "pc1",
            mac: "52:54:00:00:00:01".into(),
            ip: "10.0.0.21".into(),
            target: "iqn.2026-11.org.isboot:pc1",
            server: "10.0.0.1:9261".into(),
            installer: "debian12",
            answer_url: "http://10.0.0.1:9261/answer/52-54-00-00-00-01/debian12".into(),
            done_url: "http://10.0.0.1:9261/done/52-54-00-00-00-01".into(),
            kernel_url: "http://10.0.0.1:9261/install/debian12/kernel".into(),
            initrd_url: "http://10.0.0.1:9261/install/debian12/initrd".into(),
            iso_url: None,
            vars,
        }
    }
}

/// A template that does not render; the message is one line and names the template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("answer template {name}: {message}")]
pub struct AnswerError {
    pub name: String,
    pub message: String,
}

/// Render template `source` (called `name` in errors) for `ctx`.
pub fn render(name: &str, source: &str, ctx: &AnswerContext<'_>) -> Result<String, AnswerError> {
    let err = |e: &dyn std::fmt::Display| AnswerError {
        name: name.to_string(),
        message: e.to_string().replace(['\n', '\r'], " "),
    };
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_fuel(Some(1_000_000));
    env.set_keep_trailing_newline(true);
    env.add_template(name, source).map_err(|e| err(&e))?;
    let t = env.get_template(name).map_err(|e| err(&e))?;
    let out = t.render(Value::from_serialize(ctx)).map_err(|e| err(&e))?;
    if out.len() > MAX_ANSWER {
        return Err(err(&format!("renders more than {MAX_ANSWER} bytes")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(vars: &BTreeMap<String, String>) -> AnswerContext<'_> {
        AnswerContext::example(vars)
    }

    #[test]
    fn builtins_render_for_each_kind() {
        let mut vars = BTreeMap::new();
        let s = render("preseed.cfg", PRESEED, &ctx(&vars)).unwrap();
        assert!(s.contains("d-i netcfg/get_hostname string pc1\n"), "{s}");
        assert!(
            s.contains("http://10.0.0.1:9261/done/52-54-00-00-00-01"),
            "{s}"
        );
        assert!(!s.contains("early_command"), "{s}");
        vars.insert("early_command".into(), "echo MARK > /dev/ttyS0".into());
        let s = render("preseed.cfg", PRESEED, &ctx(&vars)).unwrap();
        assert!(
            s.contains("d-i preseed/early_command string echo MARK > /dev/ttyS0\n"),
            "{s}"
        );
        let s = render("ks.cfg", KICKSTART, &ctx(&vars)).unwrap();
        assert!(s.contains("network --bootproto=dhcp --hostname=pc1"), "{s}");
        assert!(s.contains("/done/52-54-00-00-00-01"), "{s}");
        let s = render("user-data", USER_DATA, &ctx(&vars)).unwrap();
        assert!(s.starts_with("#cloud-config\n"), "{s}");
        assert!(s.contains("interactive-sections"), "{s}");
        assert!(s.contains("/done/52-54-00-00-00-01"), "{s}");
        let s = render("meta-data", META_DATA, &ctx(&vars)).unwrap();
        assert!(s.contains("local-hostname: pc1"), "{s}");
        for k in [
            AnswerKind::Preseed,
            AnswerKind::Kickstart,
            AnswerKind::Autoinstall,
        ] {
            for f in k.files() {
                assert!(builtin(k, f).is_some(), "{k} {f}");
            }
        }
        assert!(builtin(AnswerKind::Preseed, "ks.cfg").is_none());
    }

    #[test]
    fn strict_and_bounded_errors_name_the_template() {
        let vars = BTreeMap::new();
        let e = render("mine.j2", "a {{ nope }} b", &ctx(&vars)).unwrap_err();
        assert_eq!(e.name, "mine.j2");
        assert!(
            e.to_string().starts_with("answer template mine.j2: "),
            "{e}"
        );
        let e = render("bad.j2", "{% if %}\nx\n", &ctx(&vars)).unwrap_err();
        assert!(!e.to_string().contains('\n'), "{e}");
        let e = render("iso.j2", "{{ iso_url }}", &ctx(&vars)).unwrap_err();
        assert!(e.to_string().contains("iso.j2"), "{e}");
        // Endless output stops (fuel or size), it does not eat the server.
        let e = render(
            "loop.j2",
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            &ctx(&vars),
        )
        .unwrap_err();
        assert_eq!(e.name, "loop.j2");
        let s = render("ok.j2", "{{ client }} {{ vars | length }}\n", &ctx(&vars)).unwrap();
        assert_eq!(s, "pc1 0\n");
    }

    #[test]
    fn kernel_args_point_at_the_answers() {
        let a = "http://s/answer/m/i";
        assert_eq!(
            kernel_args(AnswerKind::Preseed, a, None),
            "auto=true priority=critical interface=auto url=http://s/answer/m/i/preseed.cfg"
        );
        assert_eq!(
            kernel_args(AnswerKind::Kickstart, a, None),
            "ip=dhcp inst.ks=http://s/answer/m/i/ks.cfg"
        );
        assert_eq!(
            kernel_args(AnswerKind::Autoinstall, a, Some("http://s/install/i/iso")),
            "ip=dhcp url=http://s/install/i/iso autoinstall ds=nocloud-net;s=http://s/answer/m/i/"
        );
    }
}
