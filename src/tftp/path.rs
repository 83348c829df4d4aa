//! Mapping a requested filename to a file under the read-only TFTP root.
//!
//! Refused with an access violation: absolute paths, any `..` component, and anything whose
//! canonical path (symlinks resolved) leaves the canonical root. Backslashes (some PXE
//! loaders send DOS-style paths) are treated as `/`.

use std::fs::File;
use std::path::{Component, Path, PathBuf};

use super::TftpError;

/// Check a requested name lexically and join it to `root`.
pub fn lexical_join(root: &Path, name: &str) -> Result<PathBuf, TftpError> {
    if name.is_empty() {
        return Err(TftpError::NoFilename);
    }
    let name = name.replace('\\', "/");
    let rel = Path::new(&name);
    if rel.is_absolute() {
        return Err(TftpError::OutsideRoot(name));
    }
    let mut out = root.to_path_buf();
    for c in rel.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(TftpError::OutsideRoot(name));
            }
        }
    }
    Ok(out)
}

/// Open `name` under `root` for reading, refusing anything that leaves the root.
/// Returns the file and its length.
pub fn open_under_root(root: &Path, name: &str) -> Result<(File, u64), TftpError> {
    let joined = lexical_join(root, name)?;
    let canon_root = root.canonicalize().map_err(TftpError::OpeningRoot)?;
    let canon = match joined.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(TftpError::NotFound(name.to_string()));
        }
        Err(e) => return Err(TftpError::Opening(name.to_string(), e)),
    };
    if !canon.starts_with(&canon_root) {
        return Err(TftpError::OutsideRoot(name.to_string()));
    }
    let file = File::open(&canon).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => TftpError::NotFound(name.to_string()),
        std::io::ErrorKind::PermissionDenied => TftpError::OutsideRoot(name.to_string()),
        _ => TftpError::Opening(name.to_string(), e),
    })?;
    let meta = file
        .metadata()
        .map_err(|e| TftpError::Opening(name.to_string(), e))?;
    if !meta.is_file() {
        return Err(TftpError::NotFound(name.to_string()));
    }
    Ok((file, meta.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path().join("root");
        std::fs::create_dir(&root).expect("mkdir");
        std::fs::write(root.join("ok.bin"), b"fine").expect("write");
        std::fs::create_dir(root.join("sub")).expect("mkdir");
        std::fs::write(root.join("sub/deep.bin"), b"deep").expect("write");
        std::fs::write(dir.path().join("secret"), b"secret").expect("write");
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("escape"))
            .expect("symlink");
        std::os::unix::fs::symlink("ok.bin", root.join("inside")).expect("symlink");
        std::os::unix::fs::symlink("..", root.join("up")).expect("symlink");

        assert_eq!(open_under_root(&root, "ok.bin").expect("ok").1, 4);
        assert_eq!(open_under_root(&root, "./sub/deep.bin").expect("ok").1, 4);
        assert_eq!(open_under_root(&root, "sub\\deep.bin").expect("ok").1, 4);
        assert_eq!(
            open_under_root(&root, "inside")
                .expect("symlink inside the root")
                .1,
            4
        );
        for bad in [
            "../secret",
            "sub/../../secret",
            "/etc/passwd",
            "escape",
            "up/secret",
            "..\\secret",
        ] {
            assert!(
                matches!(open_under_root(&root, bad), Err(TftpError::OutsideRoot(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            open_under_root(&root, "missing"),
            Err(TftpError::NotFound(_))
        ));
        assert!(
            matches!(open_under_root(&root, "sub"), Err(TftpError::NotFound(_))),
            "directories are not files"
        );
        assert!(matches!(
            open_under_root(&root, ""),
            Err(TftpError::NoFilename)
        ));
    }
}
