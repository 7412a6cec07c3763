//! Client authentication: who may pull. Credentials live in two files named by `[server.auth]`:
//! an htpasswd file of bcrypt hashes (HTTP Basic) and a file of SHA-256 hashes of bearer tokens.
//! Neither file holds a secret in the clear. Both are reloaded when they change or on SIGHUP.
//!
//! bcrypt is slow on purpose, and docker, containerd and podman send their credentials with
//! every request, so a verified `Authorization` value is remembered for a few minutes (by its
//! SHA-256, never in the clear) and a refused one for a few seconds. bcrypt itself runs on
//! blocking threads, on at most half the cores, with a bounded queue: a flood of wrong
//! passwords slows logins down, but cannot take the cores that serve pulls.

mod credentials;
mod grants;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use moka::sync::Cache;
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

use super::reload::{Reload, WatchedFiles};
use crate::config::AuthConfig;
use credentials::bcrypt_cost;
pub use credentials::{Credentials, LineError, LoadError, Presented};
pub use grants::{Grants, Identity};

/// How long a verified `Authorization` value is trusted without checking it again. A reload of
/// the files forgets every verified value at once, so revoking a user does not wait for this.
const VERIFIED_FOR: Duration = Duration::from_secs(300);
/// How long a refused value is refused without checking it again.
const REFUSED_FOR: Duration = Duration::from_secs(5);

/// The challenge in every 401: docker, containerd and podman answer it with their credentials
/// for this host (a token goes as the password).
pub const CHALLENGE: &str = "Basic realm=\"wharf\"";

/// Why a client is not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No credentials, or wrong ones.
    Refused,
    /// Too many password checks are waiting already: try again in a moment.
    Busy,
}

/// Password checks that may wait for a place, per place: beyond them a client is told to come
/// back later rather than queue without end behind a flood of guesses.
const WAITING_PER_PLACE: usize = 32;

/// One reading of the files, with what was verified against it. A reload swaps the whole
/// snapshot, so a check that straddles a reload lands in caches no one reads any more.
struct Snapshot {
    credentials: Credentials,
    /// The hash an unknown user's password is checked against: the costliest in the file.
    decoy: Option<String>,
    /// SHA-256 of an `Authorization` value → whom it was verified as. Concurrent requests
    /// with the same value share one check.
    verified: moka::future::Cache<[u8; 32], Identity>,
    /// SHA-256 of `Authorization` values refused a moment ago.
    refused: Cache<[u8; 32], ()>,
}

impl Snapshot {
    fn new(credentials: Credentials) -> Snapshot {
        let decoy = credentials
            .users
            .values()
            .max_by_key(|hash| bcrypt_cost(hash))
            .cloned();
        Snapshot {
            credentials,
            decoy,
            verified: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(VERIFIED_FOR)
                .build(),
            refused: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(REFUSED_FOR)
                .build(),
        }
    }
}

/// Checks clients' credentials against the files, and keeps them current.
pub struct Authenticator {
    files: AuthConfig,
    current: RwLock<Arc<Snapshot>>,
    watched: WatchedFiles,
    /// Places for bcrypt checks running at once: half the cores, so that a flood of guesses
    /// leaves the other half serving.
    hashing: Arc<Semaphore>,
    /// Checks waiting for a place now, and the most that may.
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
    /// bcrypt checks run so far.
    password_checks: AtomicU64,
}

impl Authenticator {
    /// Reads both files, or says precisely why they cannot be used.
    pub fn load(files: &AuthConfig) -> Result<Authenticator, LoadError> {
        let watched = WatchedFiles::new(
            [&files.htpasswd, &files.tokens]
                .into_iter()
                .flatten()
                .cloned()
                .collect(),
        );
        let credentials = Credentials::read(files)?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let places = (cores / 2).max(1);
        Ok(Authenticator {
            files: files.clone(),
            current: RwLock::new(Arc::new(Snapshot::new(credentials))),
            watched,
            hashing: Arc::new(Semaphore::new(places)),
            waiting: Arc::new(AtomicUsize::new(0)),
            max_waiting: places * WAITING_PER_PLACE,
            password_checks: AtomicU64::new(0),
        })
    }

    /// How many bcrypt checks have run.
    pub fn password_checks(&self) -> u64 {
        self.password_checks.load(Ordering::Relaxed)
    }

    /// Whom `authorization` (the header's value, if any) shows the client to be.
    pub async fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Identity, AuthError> {
        let value = authorization.ok_or(AuthError::Refused)?;
        let presented = Presented::parse(value).ok_or(AuthError::Refused)?;
        let key: [u8; 32] = Sha256::digest(value).into();
        let snapshot = self.current.read().expect("lock poisoned").clone();
        if snapshot.refused.contains_key(&key) {
            return Err(AuthError::Refused);
        }
        let answer = snapshot
            .verified
            .try_get_with(key, self.check(&snapshot, presented))
            .await
            .map_err(|e| *e);
        if answer == Err(AuthError::Refused) {
            snapshot.refused.insert(key, ());
        }
        answer
    }

    async fn check(
        &self,
        snapshot: &Snapshot,
        presented: Presented,
    ) -> Result<Identity, AuthError> {
        let credentials = &snapshot.credentials;
        let token = |token: &str| credentials.token(token).map(Identity::Token);
        let (user, password) = match presented {
            Presented::Bearer(presented) => return token(&presented).ok_or(AuthError::Refused),
            Presented::Basic { user, password } => (user, password),
        };
        let Some(hash) = credentials.users.get(&user) else {
            if let Some(bearer) = token(&password) {
                return Ok(bearer);
            }
            // An unknown user costs what a wrong password does, so that timing does not tell
            // which users exist.
            if let Some(decoy) = &snapshot.decoy {
                self.bcrypt(password, decoy.clone()).await?;
            }
            return Err(AuthError::Refused);
        };
        if self.bcrypt(password, hash.clone()).await? {
            Ok(Identity::User(user.into()))
        } else {
            Err(AuthError::Refused)
        }
    }

    /// Whether `password` matches the bcrypt `hash`, checked on a blocking thread once a place
    /// is free; `Busy` if too many checks wait already.
    async fn bcrypt(&self, password: String, hash: String) -> Result<bool, AuthError> {
        let place = match self.hashing.clone().try_acquire_owned() {
            Ok(place) => place,
            Err(_) => {
                let waiting = Waiting::enter(&self.waiting, self.max_waiting)?;
                let place = self.hashing.clone().acquire_owned().await;
                drop(waiting);
                place.map_err(|_| AuthError::Busy)?
            }
        };
        self.password_checks.fetch_add(1, Ordering::Relaxed);
        let matched = tokio::task::spawn_blocking(move || {
            let _place = place;
            bcrypt::verify(password, &hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        Ok(matched)
    }
}

/// A place in the queue for bcrypt, given up when dropped (a client may go away while it
/// waits).
struct Waiting(Arc<AtomicUsize>);

impl Waiting {
    fn enter(count: &Arc<AtomicUsize>, max: usize) -> Result<Waiting, AuthError> {
        if count.fetch_add(1, Ordering::AcqRel) >= max {
            count.fetch_sub(1, Ordering::AcqRel);
            return Err(AuthError::Busy);
        }
        Ok(Waiting(count.clone()))
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Reload for Authenticator {
    /// Files that do not parse (or cannot be read, or are gone) are logged and the previous
    /// credentials kept: a broken file must not lock everyone out, nor let everyone in.
    fn reload(&self, forced: bool) {
        if !self.watched.changed(forced) {
            return;
        }
        match Credentials::read(&self.files) {
            Ok(credentials) => {
                let (users, tokens) = (credentials.users.len(), credentials.tokens.len());
                *self.current.write().expect("lock poisoned") =
                    Arc::new(Snapshot::new(credentials));
                tracing::info!(users, tokens, "client credentials reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "client credentials not reloaded; the previous ones stay in use")
            }
        }
    }
}

#[cfg(test)]
mod tests;
