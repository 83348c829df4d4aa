//! Importing an image file as a raw base version: raw files are copied (all-zero MiB chunks
//! left as holes); qcow2, VMDK and VHDX go through `qemu-img convert` when it is installed.

use super::{ConfigError, sync_dir};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Image file formats recognised by their magic bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
    Vmdk,
    Vhdx,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vhdx => "vhdx",
        }
    }
}

/// Guess the format from the first bytes of the file.
pub fn detect(head: &[u8]) -> Format {
    if head.starts_with(b"QFI\xfb") {
        Format::Qcow2
    } else if head.starts_with(b"KDMV") || head.starts_with(b"# Disk DescriptorFile") {
        Format::Vmdk
    } else if head.starts_with(b"vhdxfile") {
        Format::Vhdx
    } else {
        Format::Raw
    }
}

fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// Open `src` and tell its format; a raw image must be a non-zero multiple of 512 bytes.
/// Returns the open file, its length and its format.
pub fn probe(src: &Path) -> Result<(File, u64, Format), ConfigError> {
    let bad = |m: String| ConfigError::BadArgument(m);
    let mut f = File::open(src).map_err(|e| bad(format!("cannot read {}: {e}", src.display())))?;
    let meta = f
        .metadata()
        .map_err(|e| bad(format!("cannot read {}: {e}", src.display())))?;
    if !meta.is_file() {
        return Err(bad(format!("{} is not a regular file", src.display())));
    }
    let mut head = [0u8; 64];
    let n = f
        .read(&mut head)
        .map_err(|e| bad(format!("cannot read {}: {e}", src.display())))?;
    let format = detect(&head[..n]);
    let size = meta.len();
    if format == Format::Raw && (size == 0 || size % 512 != 0) {
        return Err(bad(format!(
            "{} is {size} bytes: a raw disk image must be a non-zero multiple of 512 bytes",
            src.display()
        )));
    }
    Ok((f, size, format))
}

/// Copy or convert `src` into the raw file `dest` (via a temp file and a rename). `progress`
/// gets (bytes done, bytes total). Returns the image size.
pub fn import(
    src: &Path,
    dest: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64, ConfigError> {
    let (f, size, format) = probe(src)?;
    let dir = dest.parent().unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let werr = |source| ConfigError::Writing {
        path: tmp.clone(),
        source,
    };
    let res = (|| {
        let size = match format {
            Format::Raw => {
                let out = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&tmp)
                    .map_err(werr)?;
                out.set_len(size).map_err(werr)?;
                let mut buf = vec![0u8; 1 << 20];
                let mut off = 0u64;
                while off < size {
                    let n = (size - off).min(buf.len() as u64) as usize;
                    f.read_exact_at(&mut buf[..n], off)
                        .map_err(|e| ConfigError::Reading {
                            path: src.to_path_buf(),
                            source: e,
                        })?;
                    if buf[..n].iter().any(|&b| b != 0) {
                        out.write_all_at(&buf[..n], off).map_err(werr)?;
                    }
                    off += n as u64;
                    progress(off, size);
                }
                out.sync_all().map_err(werr)?;
                size
            }
            other => {
                let Some(qemu) = which("qemu-img") else {
                    return Err(ConfigError::Importing {
                        path: src.to_path_buf(),
                        message: format!(
                            "it is a {} image and converting it needs qemu-img, which is not installed (apt-get install qemu-utils)",
                            other.name()
                        ),
                    });
                };
                // qemu-img draws its own progress (-p) on stdout: send it to our stderr.
                let status = Command::new(qemu)
                    .args(["convert", "-p", "-f", other.name(), "-O", "raw"])
                    .arg(src)
                    .arg(&tmp)
                    .stdin(Stdio::null())
                    .stdout(std::io::stderr())
                    .status()
                    .map_err(|e| ConfigError::Importing {
                        path: src.to_path_buf(),
                        message: format!("running qemu-img: {e}"),
                    })?;
                if !status.success() {
                    return Err(ConfigError::Importing {
                        path: src.to_path_buf(),
                        message: format!("qemu-img convert failed ({status})"),
                    });
                }
                let out = OpenOptions::new().write(true).open(&tmp).map_err(werr)?;
                let size: u64 = out.metadata().map_err(werr)?.len();
                if size == 0 || size % 512 != 0 {
                    return Err(ConfigError::Importing {
                        path: src.to_path_buf(),
                        message: format!("converted image is {size} bytes, not a multiple of 512"),
                    });
                }
                out.sync_all().map_err(werr)?;
                progress(size, size);
                size
            }
        };
        std::fs::rename(&tmp, dest).map_err(|source| ConfigError::Writing {
            path: dest.to_path_buf(),
            source,
        })?;
        sync_dir(dir).map_err(|source| ConfigError::Writing {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(size)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats() {
        assert_eq!(detect(b"QFI\xfb\0\0\0\x03"), Format::Qcow2);
        assert_eq!(detect(b"KDMV\x01"), Format::Vmdk);
        assert_eq!(detect(b"# Disk DescriptorFile\n"), Format::Vmdk);
        assert_eq!(detect(b"vhdxfile"), Format::Vhdx);
        assert_eq!(detect(b"\xeb\x63\x90"), Format::Raw);
        assert_eq!(detect(b""), Format::Raw);
    }

    #[test]
    fn copies_raw_sparsely_and_refuses_odd_sizes() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("in.img");
        let mut data = vec![0u8; 3 << 20];
        data[5] = 1;
        data[(2 << 20) + 7] = 2;
        std::fs::write(&src, &data).unwrap();
        let dest = d.path().join("out.raw");
        let mut last = (0, 0);
        let size = import(&src, &dest, &mut |a, b| last = (a, b)).unwrap();
        assert_eq!(size, 3 << 20);
        assert_eq!(last, (3 << 20, 3 << 20));
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        std::fs::write(&src, [1u8; 1000]).unwrap();
        let e = import(&src, &d.path().join("x.raw"), &mut |_, _| {}).unwrap_err();
        assert!(e.is_bad_argument(), "{e}");
        assert!(!d.path().join("x.raw").exists());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);
    }
}
