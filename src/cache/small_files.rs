//! Small files named by a hash of what they are about, under one area of the cache directory
//! (`<root>/<area>/<ab>/<abcd…>`): replaced whole by rename, not fsynced (what they hold is
//! cheap to learn again), their mtime the time of their last use, removed once idle. The tag
//! table and the record of which index lists a manifest keep their state this way.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use crate::oci::Digest;

pub struct SmallFiles {
    dir: PathBuf,
    tmp: PathBuf,
    /// Names this area's temp files, so areas never collide in `<root>/tmp`.
    area: &'static str,
    next_temp: AtomicU64,
}

impl SmallFiles {
    /// Files live in `<root>/<area>`; temp files go to `<root>/tmp`, which the store empties
    /// at start-up.
    pub fn open(root: &Path, area: &'static str) -> io::Result<SmallFiles> {
        let dir = root.join(area);
        let tmp = root.join("tmp");
        fs::create_dir_all(&dir)?;
        fs::create_dir_all(&tmp)?;
        Ok(SmallFiles {
            dir,
            tmp,
            area,
            next_temp: AtomicU64::new(0),
        })
    }

    /// The file of `key`.
    pub fn path(&self, key: &str) -> PathBuf {
        let hex = Digest::sha256_of(key.as_bytes()).hex().to_owned();
        self.dir.join(&hex[..2]).join(hex)
    }

    pub fn read(&self, key: &str) -> io::Result<Vec<u8>> {
        fs::read(self.path(key))
    }

    /// Replaces the file of `key` with `bytes`.
    pub fn replace(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self.path(key);
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        let temp = self
            .tmp
            .join(format!("{}-{}-{n}", self.area, std::process::id()));
        let written = (|| {
            fs::File::create(&temp)?.write_all(bytes)?;
            fs::create_dir_all(path.parent().expect("the file of a key has a parent"))?;
            fs::rename(&temp, &path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written
    }

    /// Removes the file of `key`; one that is not there is no error.
    pub fn remove(&self, key: &str) -> io::Result<()> {
        match fs::remove_file(self.path(key)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Marks the file of `key` as used now (its mtime).
    pub fn touch(&self, key: &str) -> io::Result<()> {
        fs::File::open(self.path(key))?.set_modified(SystemTime::now())
    }

    /// The contents of every file of the area (blocking; one read per file): for views over
    /// everything held, not for the request path.
    pub fn read_all(&self) -> io::Result<Vec<Vec<u8>>> {
        let mut all = Vec::new();
        for fan in fs::read_dir(&self.dir)? {
            let Ok(files) = fs::read_dir(fan?.path()) else {
                continue;
            };
            all.extend(
                files
                    .flatten()
                    .filter_map(|file| fs::read(file.path()).ok()),
            );
        }
        Ok(all)
    }

    /// Removes the files not used since `cutoff`; returns how many.
    pub fn remove_idle(&self, cutoff: SystemTime) -> io::Result<usize> {
        let mut removed = 0;
        for fan in fs::read_dir(&self.dir)? {
            let Ok(files) = fs::read_dir(fan?.path()) else {
                continue;
            };
            for file in files.flatten() {
                let idle = file
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|modified| modified < cutoff);
                if idle && fs::remove_file(file.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}
