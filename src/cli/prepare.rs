//! `isboot image prepare NAME`: run the initrd rebuild script of `initrd-hooks/` on a copy of
//! the image's newest version and publish the result as the next version.

use super::{CliError, ImagePrepareArgs};
use crate::config::StateDir;
use crate::config::names::ImageName;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

/// Where the rebuild script lives: `ISBOOT_HOOKS_DIR`, the source tree the binary was built
/// in, or an installed copy.
fn hooks_dir() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(d) = std::env::var_os("ISBOOT_HOOKS_DIR") {
        candidates.push(PathBuf::from(d));
    }
    candidates.push(PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/initrd-hooks"
    )));
    if let Ok(exe) = std::env::current_exe()
        && let Some(bin) = exe.parent()
    {
        candidates.push(bin.join("../../initrd-hooks"));
        candidates.push(bin.join("../share/isboot/initrd-hooks"));
    }
    candidates.push(PathBuf::from("/usr/share/isboot/initrd-hooks"));
    candidates
        .into_iter()
        .find(|d| d.join("isboot-rebuild-initrd").is_file())
}

pub fn run(dir: &StateDir, a: &ImagePrepareArgs) -> Result<(), CliError> {
    let name: ImageName = a.name.parse().map_err(CliError::Bad)?;
    let src = dir.newest_version_file(&name)?;
    let hooks = hooks_dir().ok_or_else(|| {
        CliError::Failed(
            "cannot find initrd-hooks/isboot-rebuild-initrd: set ISBOOT_HOOKS_DIR to the initrd-hooks directory of an isboot checkout"
                .into(),
        )
    })?;
    if !crate::sys::is_root() {
        return Err(CliError::Failed(
            "image prepare must run as root (it attaches the image to a loop device and chroots into it)".into(),
        ));
    }
    let staged = dir.path(&format!(
        "images/.prepare-{name}-{}.raw",
        std::process::id()
    ));
    errln!("image prepare: copying {} (sparse)", src.display());
    let ok = Command::new("cp")
        .arg("--sparse=always")
        .arg(&src)
        .arg(&staged)
        .status()
        .map_err(|e| CliError::Failed(format!("running cp: {e}")))?
        .success();
    if !ok {
        let _ = std::fs::remove_file(&staged);
        return Err(CliError::Failed(format!(
            "copying {} failed",
            src.display()
        )));
    }
    // The copy took the published file's mode (read-only, BASE_MODE); the rebuild writes it.
    if let Err(e) = std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o660)) {
        let _ = std::fs::remove_file(&staged);
        return Err(CliError::Failed(format!(
            "making {} writable: {e}",
            staged.display()
        )));
    }
    let mut cmd = Command::new(hooks.join("isboot-rebuild-initrd"));
    if let Some(p) = &a.profile {
        cmd.args(["--profile", p]);
    }
    if a.install_missing {
        cmd.arg("--install-missing");
    }
    cmd.arg(&staged);
    errln!(
        "image prepare: {}",
        hooks.join("isboot-rebuild-initrd").display()
    );
    let status = cmd
        .status()
        .map_err(|e| CliError::Failed(format!("running the rebuild script: {e}")));
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            let _ = std::fs::remove_file(&staged);
            return Err(CliError::Failed(format!(
                "the initrd rebuild failed ({s}); the image is unchanged (see the messages above)"
            )));
        }
        Err(e) => {
            let _ = std::fs::remove_file(&staged);
            return Err(e);
        }
    }
    let v = dir.image_publish(&name, &staged).inspect_err(|_| {
        let _ = std::fs::remove_file(&staged);
    })?;
    outln!(
        "image {name}: version {} published (initrd rebuilt for diskless boot); reset-mode clients get it at their next power-on, persistent clients when they are reset",
        v.number
    );
    Ok(())
}
