//! Client authentication: who may pull. Credentials live in two files named by `[server.auth]`:
//! an htpasswd file of bcrypt hashes (HTTP Basic) and a file of SHA-256 hashes of bearer tokens.
//! Neither file holds a secret in the clear. Both are reloaded when they change or on SIGHUP.
//!
//! bcrypt is slow on purpose, and docker, containerd and podman send their credentials with
//! every request, so a verified `Authorization` value is remembered for a few minutes (by its
//! SHA-256, never in the clear) and a refused one for a few seconds. bcrypt itself runs on
//! blocking threads, on at most half the cores, with a bounded queue: a flood of wrong
//! passwords slows logins down, but cannot take the cores that serve pulls.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use moka::sync::Cache;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use super::reload::{Reload, WatchedFiles};
use crate::config::AuthConfig;

/// How long a verified `Authorization` value is trusted without checking it again. A reload of
/// the files forgets every verified value at once, so revoking a user does not wait for this.
const VERIFIED_FOR: Duration = Duration::from_secs(300);
/// How long a refused value is refused without checking it again.
const REFUSED_FOR: Duration = Duration::from_secs(5);

/// The challenge in every 401: docker, containerd and podman answer it with their credentials
/// for this host (a token goes as the password).
pub const CHALLENGE: &str = "Basic realm=\"wharf\"";

/// Credentials a client presented in its `Authorization` header.
#[derive(PartialEq, Eq)]
pub enum Presented {
    Basic { user: String, password: String },
    Bearer(String),
}

impl Presented {
    /// Parses an `Authorization` value: `Basic <base64 user:password>` or `Bearer <token>`,
    /// the scheme in any case. `None` for anything else.
    pub fn parse(value: &[u8]) -> Option<Presented> {
        let value = std::str::from_utf8(value).ok()?.trim();
        let (scheme, rest) = value.split_once(' ')?;
        let rest = rest.trim();
        if rest.is_empty() {
            return None;
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()?;
            let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
            Some(Presented::Basic {
                user: user.to_owned(),
                password: password.to_owned(),
            })
        } else if scheme.eq_ignore_ascii_case("bearer") {
            Some(Presented::Bearer(rest.to_owned()))
        } else {
            None
        }
    }
}

/// Shows who, never the secret.
impl fmt::Debug for Presented {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Presented::Basic { user, .. } => write!(f, "Basic({user:?}, <password>)"),
            Presented::Bearer(_) => f.write_str("Bearer(<token>)"),
        }
    }
}

/// Why a line of a credentials file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("line {0}: expected user:hash")]
    NotUserAndHash(usize),
    #[error("line {0}: empty user name")]
    EmptyUser(usize),
    #[error(
        "line {line}: user {user:?} has a hash that is not bcrypt (create it with htpasswd -B)"
    )]
    NotBcrypt { line: usize, user: String },
    #[error("line {line}: user {user:?} is listed twice")]
    UserTwice { line: usize, user: String },
    #[error(
        "line {0}: expected sha256:<64 hex digits> (printf %s \"$token\" | sha256sum), then an \
         optional label"
    )]
    NotTokenHash(usize),
    #[error("line {0}: this token is listed twice")]
    TokenTwice(usize),
}

/// Why the credentials files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {}: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", file.display())]
    Line {
        file: PathBuf,
        #[source]
        source: LineError,
    },
}

/// What the two files hold.
#[derive(Default)]
pub struct Credentials {
    /// User → bcrypt hash.
    users: HashMap<String, String>,
    /// SHA-256 of each token, and the name the access log gives its bearer.
    tokens: Vec<([u8; 32], Arc<str>)>,
}

impl Credentials {
    /// Parses an htpasswd file. Only bcrypt is accepted: the other htpasswd hashes (MD5-crypt,
    /// SHA-1, crypt, plain) are fast enough to brute-force from a leaked file.
    pub fn parse_htpasswd(&mut self, text: &str) -> Result<(), LineError> {
        for (line_no, line) in entries(text) {
            let Some((user, hash)) = line.split_once(':') else {
                return Err(LineError::NotUserAndHash(line_no));
            };
            if user.is_empty() {
                return Err(LineError::EmptyUser(line_no));
            }
            if !is_bcrypt(hash) {
                return Err(LineError::NotBcrypt {
                    line: line_no,
                    user: user.to_owned(),
                });
            }
            if self
                .users
                .insert(user.to_owned(), hash.to_owned())
                .is_some()
            {
                return Err(LineError::UserTwice {
                    line: line_no,
                    user: user.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Parses a token file: `sha256:<64 hex>` lines, each optionally followed by a label.
    pub fn parse_tokens(&mut self, text: &str) -> Result<(), LineError> {
        for (line_no, line) in entries(text) {
            let (hash, label) = line
                .split_once(char::is_whitespace)
                .map_or((line, ""), |(h, l)| (h, l.trim()));
            let hash = hash
                .strip_prefix("sha256:")
                .and_then(|hex| <[u8; 32]>::try_from(hex::decode(hex).ok()?).ok())
                .ok_or(LineError::NotTokenHash(line_no))?;
            if self.tokens.iter().any(|(h, _)| *h == hash) {
                return Err(LineError::TokenTwice(line_no));
            }
            let label = if label.is_empty() {
                format!("token:{}", &hex::encode(hash)[..8])
            } else {
                label.to_owned()
            };
            self.tokens.push((hash, label.into()));
        }
        Ok(())
    }

    /// The label of the token `presented`, compared with every stored hash in constant time.
    fn token(&self, presented: &str) -> Option<Arc<str>> {
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for (stored, label) in &self.tokens {
            if bool::from(stored.ct_eq(&hash)) {
                found = Some(label.clone());
            }
        }
        found
    }
}

/// The lines of a credentials file that say something, trimmed, with their line numbers:
/// blank lines and `#` comments are skipped.
fn entries(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(n, line)| (n + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
}

/// Counts, never hashes.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("users", &self.users.len())
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

/// `$2a$`, `$2b$` or `$2y$`, a cost from 4 to 31, then 53 characters of salt and hash.
/// (`$2x$`, from a buggy old implementation, would not verify as its author expects.)
fn is_bcrypt(hash: &str) -> bool {
    let b = hash.as_bytes();
    b.len() == 60
        && b.starts_with(b"$2")
        && matches!(b[2], b'a' | b'b' | b'y')
        && b[3] == b'$'
        && bcrypt_cost(hash).is_some_and(|cost| (4..=31).contains(&cost))
        && b[6] == b'$'
        && b[7..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'/'))
}

/// The cost of a bcrypt hash: the two digits after `$2?$`.
fn bcrypt_cost(hash: &str) -> Option<u32> {
    let digits = hash.get(4..6)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

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
    verified: moka::future::Cache<[u8; 32], Arc<str>>,
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
        let credentials = read(files)?;
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
    pub async fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Arc<str>, AuthError> {
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
    ) -> Result<Arc<str>, AuthError> {
        let credentials = &snapshot.credentials;
        let (user, password) = match presented {
            Presented::Bearer(token) => return credentials.token(&token).ok_or(AuthError::Refused),
            Presented::Basic { user, password } => (user, password),
        };
        let Some(hash) = credentials.users.get(&user) else {
            if let Some(label) = credentials.token(&password) {
                return Ok(label);
            }
            // An unknown user costs what a wrong password does, so that timing does not tell
            // which users exist.
            if let Some(decoy) = &snapshot.decoy {
                self.bcrypt(password, decoy.clone()).await?;
            }
            return Err(AuthError::Refused);
        };
        if self.bcrypt(password, hash.clone()).await? {
            Ok(user.into())
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
        match read(&self.files) {
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

fn read(files: &AuthConfig) -> Result<Credentials, LoadError> {
    let mut credentials = Credentials::default();
    let text = |path: &Path| {
        fs::read_to_string(path).map_err(|source| LoadError::Read {
            file: path.to_owned(),
            source,
        })
    };
    fn in_file(path: &Path) -> impl FnOnce(LineError) -> LoadError + '_ {
        move |source| LoadError::Line {
            file: path.to_owned(),
            source,
        }
    }
    if let Some(path) = &files.htpasswd {
        credentials
            .parse_htpasswd(&text(path)?)
            .map_err(in_file(path))?;
    }
    if let Some(path) = &files.tokens {
        credentials
            .parse_tokens(&text(path)?)
            .map_err(in_file(path))?;
    }
    Ok(credentials)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> Vec<u8> {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {encoded}").into_bytes()
    }

    fn files(dir: &Path, htpasswd: &str, tokens: &str) -> AuthConfig {
        fs::write(dir.join("htpasswd"), htpasswd).unwrap();
        fs::write(dir.join("tokens"), tokens).unwrap();
        AuthConfig {
            htpasswd: Some(dir.join("htpasswd")),
            tokens: Some(dir.join("tokens")),
        }
    }

    fn token_line(token: &str, label: &str) -> String {
        format!("sha256:{} {label}\n", hex::encode(Sha256::digest(token)))
    }

    #[test]
    fn authorization_values() {
        assert_eq!(
            Presented::parse(&basic("alice", "s3:cret")),
            Some(Presented::Basic {
                user: "alice".into(),
                password: "s3:cret".into()
            })
        );
        assert_eq!(
            Presented::parse(b"bearer abc.def"),
            Some(Presented::Bearer("abc.def".into()))
        );
        for bad in [
            &b""[..],
            b"Basic",
            b"Basic ",
            b"Basic !!!",
            b"Basic YWxpY2U=", // no colon
            b"Digest abc",
            b"Bearer",
            b"\xff\xfe",
        ] {
            assert_eq!(Presented::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_bcrypt_hashes_and_well_formed_token_lines() {
        let mut c = Credentials::default();
        let good = bcrypt::hash("pw", 4).unwrap();
        c.parse_htpasswd(&format!("# users\nalice:{good}\n\n"))
            .unwrap();
        for bad in [
            "bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",
            "bob:$apr1$abc$defghijklmnopqrstuvwxy",
            "bob:plain",
            "bob:$2b$03$abcdefghijklmnopqrstuuabcdefghijklmnopqrstuvwxyzABCDE",
            "bob:$2x$10$abcdefghijklmnopqrstuuabcdefghijklmnopqrstuvwxyzABCDE",
            "nocolon",
            &format!(":{good}"),
            &format!("alice:{good}"), // listed twice
        ] {
            let e = c.parse_htpasswd(bad).unwrap_err().to_string();
            assert!(e.starts_with("line 1:"), "{e}");
            assert!(
                !e.contains("W6ph5") && !e.contains("plain"),
                "no hash echoed: {e}"
            );
        }
        c.parse_tokens(&token_line("t1", "ci runners")).unwrap();
        assert_eq!(c.tokens[0].1.as_ref(), "ci runners");
        c.parse_tokens(&token_line("t2", "")).unwrap();
        assert!(c.tokens[1].1.starts_with("token:"));
        for bad in ["t1", "sha256:abcd", "sha512:00", &token_line("t1", "again")] {
            assert!(c.parse_tokens(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn users_tokens_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash("open sesame", 4).unwrap();
        let auth = Authenticator::load(&files(
            dir.path(),
            &format!("alice:{hash}\n"),
            &token_line("tok-123", "ci"),
        ))
        .unwrap();
        let ok = |r: Result<Arc<str>, AuthError>| r.map(|who| who.to_string());
        assert_eq!(
            ok(auth
                .authenticate(Some(&basic("alice", "open sesame")))
                .await),
            Ok("alice".into())
        );
        // Remembered: the same value again is not a second bcrypt.
        assert_eq!(
            ok(auth
                .authenticate(Some(&basic("alice", "open sesame")))
                .await),
            Ok("alice".into())
        );
        assert_eq!(
            ok(auth.authenticate(Some(b"Bearer tok-123")).await),
            Ok("ci".into())
        );
        // A token as a Basic password, under a name that is not a user.
        assert_eq!(
            ok(auth.authenticate(Some(&basic("token", "tok-123"))).await),
            Ok("ci".into())
        );
        for refused in [
            None,
            Some(basic("alice", "wrong")),
            Some(basic("alice", "tok-123")),
            Some(basic("mallory", "open sesame")),
            Some(b"Bearer tok-124".to_vec()),
            Some(b"Bearer open sesame".to_vec()),
            Some(b"Negotiate abc".to_vec()),
        ] {
            assert_eq!(
                auth.authenticate(refused.as_deref()).await,
                Err(AuthError::Refused),
                "{refused:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_reload_revokes_at_once_and_a_broken_file_keeps_the_old_set() {
        let dir = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash("pw", 4).unwrap();
        let config = files(
            dir.path(),
            &format!("alice:{hash}\nbob:{hash}\n"),
            &token_line("t", "ci"),
        );
        let auth = Authenticator::load(&config).unwrap();
        assert!(auth.authenticate(Some(&basic("bob", "pw"))).await.is_ok());
        fs::write(dir.path().join("htpasswd"), format!("alice:{hash}\n")).unwrap();
        auth.reload(true);
        assert_eq!(
            auth.authenticate(Some(&basic("bob", "pw"))).await,
            Err(AuthError::Refused)
        );
        assert!(auth.authenticate(Some(&basic("alice", "pw"))).await.is_ok());
        fs::write(dir.path().join("htpasswd"), "alice:half-writ").unwrap();
        auth.reload(true);
        assert!(auth.authenticate(Some(&basic("alice", "pw"))).await.is_ok());
        assert!(auth.authenticate(Some(b"Bearer t")).await.is_ok());
    }

    /// Takes every place for bcrypt, so that checks queue until the places are given back.
    async fn hold_every_place(auth: &Authenticator) -> tokio::sync::OwnedSemaphorePermit {
        let places = auth.hashing.available_permits() as u32;
        auth.hashing
            .clone()
            .acquire_many_owned(places)
            .await
            .unwrap()
    }

    /// Polls `condition` until it holds, for at most 30 s (a bound, not a timing).
    async fn until(condition: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !condition() {
            assert!(std::time::Instant::now() < deadline, "condition never held");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_guesses_is_turned_away_and_known_clients_pass() {
        let dir = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash("right", 4).unwrap();
        let auth = Arc::new(
            Authenticator::load(&files(dir.path(), &format!("alice:{hash}\n"), "")).unwrap(),
        );
        assert!(auth
            .authenticate(Some(&basic("alice", "right")))
            .await
            .is_ok());
        // With every place taken, no bcrypt can run: guesses queue up to the bound, and the
        // rest are turned away at once.
        let places = hold_every_place(&auth).await;
        let guesses: Vec<_> = (0..200)
            .map(|n| {
                let auth = auth.clone();
                tokio::spawn(async move {
                    auth.authenticate(Some(&basic("alice", &format!("guess-{n}"))))
                        .await
                })
            })
            .collect();
        let queued = auth.max_waiting.min(200);
        until(|| {
            let finished = guesses.iter().filter(|g| g.is_finished()).count();
            auth.waiting.load(Ordering::Acquire) == queued && finished == 200 - queued
        })
        .await;
        // Meanwhile a client already verified is let in without a bcrypt: none could run.
        let verified = tokio::time::timeout(
            Duration::from_secs(30),
            auth.authenticate(Some(&basic("alice", "right"))),
        )
        .await;
        assert!(matches!(verified, Ok(Ok(_))), "{verified:?}");
        drop(places);
        let (mut busy, mut refused) = (0, 0);
        for guess in guesses {
            match guess.await.unwrap() {
                Err(AuthError::Busy) => busy += 1,
                Err(AuthError::Refused) => refused += 1,
                Ok(who) => panic!("a guess got in as {who}"),
            }
        }
        assert_eq!((busy, refused), (200 - queued, queued));
        assert_eq!(auth.waiting.load(Ordering::Acquire), 0);
        assert_eq!(auth.password_checks(), 1 + queued as u64);
    }

    /// Runs `n` checks of one value on this (single) thread until each has reached its first
    /// wait, and returns them.
    async fn start_checks(
        auth: &Arc<Authenticator>,
        value: &[u8],
        n: usize,
    ) -> Vec<tokio::task::JoinHandle<Result<Arc<str>, AuthError>>> {
        let checks: Vec<_> = (0..n)
            .map(|_| {
                let (auth, value) = (auth.clone(), value.to_vec());
                tokio::spawn(async move { auth.authenticate(Some(&value)).await })
            })
            .collect();
        // On a current-thread runtime nothing else runs: a few rounds of yielding let every
        // check reach the point where it waits.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        checks
    }

    #[tokio::test]
    async fn concurrent_checks_of_one_credential_share_one_bcrypt() {
        let dir = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash("right", 4).unwrap();
        let auth = Arc::new(
            Authenticator::load(&files(dir.path(), &format!("alice:{hash}\n"), "")).unwrap(),
        );
        let places = hold_every_place(&auth).await;
        let checks = start_checks(&auth, &basic("alice", "right"), 20).await;
        assert_eq!(
            auth.waiting.load(Ordering::Acquire),
            1,
            "twenty checks of one value, one in the queue for bcrypt"
        );
        drop(places);
        for check in checks {
            assert_eq!(&*check.await.unwrap().unwrap(), "alice");
        }
        assert_eq!(auth.password_checks(), 1);
    }

    #[tokio::test]
    async fn a_check_that_straddles_a_reload_does_not_outlive_it() {
        let dir = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash("right", 4).unwrap();
        let config = files(dir.path(), &format!("alice:{hash}\nbob:{hash}\n"), "");
        let auth = Arc::new(Authenticator::load(&config).unwrap());
        let places = hold_every_place(&auth).await;
        let alice = basic("alice", "right");
        let straddling = start_checks(&auth, &alice, 1).await;
        // alice is removed while her check waits for bcrypt.
        fs::write(dir.path().join("htpasswd"), format!("bob:{hash}\n")).unwrap();
        auth.reload(true);
        drop(places);
        // The check was made against the file as it was when it began...
        for check in straddling {
            let _ = check.await.unwrap();
        }
        // ...but its answer is not what the next request gets.
        assert_eq!(
            auth.authenticate(Some(&alice)).await,
            Err(AuthError::Refused)
        );
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let presented = Presented::parse(&basic("alice", "s3cret")).unwrap();
        assert_eq!(format!("{presented:?}"), "Basic(\"alice\", <password>)");
        let mut c = Credentials::default();
        c.parse_tokens(&token_line("tok", "ci")).unwrap();
        assert!(!format!("{c:?}").contains(&hex::encode(Sha256::digest("tok"))));
    }

    #[test]
    fn a_missing_or_bad_file_stops_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let missing = AuthConfig {
            htpasswd: Some(dir.path().join("nope")),
            tokens: None,
        };
        assert!(Authenticator::load(&missing)
            .err()
            .unwrap()
            .to_string()
            .contains("nope"));
        let bad = files(dir.path(), "alice:plain\n", "");
        assert!(Authenticator::load(&bad)
            .err()
            .unwrap()
            .to_string()
            .contains("line 1"));
    }
}
