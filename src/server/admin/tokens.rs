//! The admin tokens: a file of SHA-256 hashes (`sha256:<hex> label` lines, as client tokens),
//! reloaded when it changes or on SIGHUP. Only `Authorization: Bearer <token>` is taken.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::config::AuthConfig;
use crate::server::auth::{Credentials, LoadError, Presented};
use crate::server::reload::{Reload, WatchedFiles};

pub struct AdminTokens {
    file: PathBuf,
    current: RwLock<Arc<Credentials>>,
    watched: WatchedFiles,
}

impl AdminTokens {
    /// Reads the file, or says precisely why it cannot be used.
    pub fn load(file: &Path) -> Result<AdminTokens, LoadError> {
        Ok(AdminTokens {
            file: file.to_owned(),
            current: RwLock::new(Arc::new(read(file)?)),
            watched: WatchedFiles::new(vec![file.to_owned()]),
        })
    }

    /// The label of the admin token `authorization` carries, if it is one (compared with
    /// every stored hash in constant time).
    pub fn who(&self, authorization: Option<&[u8]>) -> Option<Arc<str>> {
        let Some(Presented::Bearer(token)) = Presented::parse(authorization?) else {
            return None;
        };
        let tokens = self.current.read().expect("lock poisoned").clone();
        tokens.token(&token)
    }
}

fn read(file: &Path) -> Result<Credentials, LoadError> {
    Credentials::read(&AuthConfig {
        htpasswd: None,
        tokens: Some(file.to_owned()),
        grants: Vec::new(),
    })
}

impl Reload for AdminTokens {
    /// A file that does not parse is logged and the previous tokens kept.
    fn reload(&self, forced: bool) {
        if !self.watched.changed(forced) {
            return;
        }
        match read(&self.file) {
            Ok(tokens) => {
                *self.current.write().expect("lock poisoned") = Arc::new(tokens);
                tracing::info!("admin tokens reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin tokens not reloaded; the previous ones stay in use")
            }
        }
    }
}
