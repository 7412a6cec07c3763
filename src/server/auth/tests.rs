use super::*;
use base64::Engine;
use std::fs;
use std::path::Path;

fn basic(user: &str, password: &str) -> Vec<u8> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}").into_bytes()
}

fn files(dir: &Path, htpasswd: &str, tokens: &str) -> AuthConfig {
    fs::write(dir.join("htpasswd"), htpasswd).unwrap();
    fs::write(dir.join("tokens"), tokens).unwrap();
    AuthConfig {
        htpasswd: Some(dir.join("htpasswd")),
        tokens: Some(dir.join("tokens")),
        grants: Vec::new(),
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
    assert_eq!(
        (auth
            .authenticate(Some(&basic("alice", "open sesame")))
            .await),
        Ok(Identity::User("alice".into()))
    );
    // Remembered: the same value again is not a second bcrypt.
    assert_eq!(
        (auth
            .authenticate(Some(&basic("alice", "open sesame")))
            .await),
        Ok(Identity::User("alice".into()))
    );
    assert_eq!(
        (auth.authenticate(Some(b"Bearer tok-123")).await),
        Ok(Identity::Token("ci".into()))
    );
    // A token as a Basic password, under a name that is not a user.
    assert_eq!(
        (auth.authenticate(Some(&basic("token", "tok-123"))).await),
        Ok(Identity::Token("ci".into()))
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
    let auth =
        Arc::new(Authenticator::load(&files(dir.path(), &format!("alice:{hash}\n"), "")).unwrap());
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
) -> Vec<tokio::task::JoinHandle<Result<Identity, AuthError>>> {
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
    let auth =
        Arc::new(Authenticator::load(&files(dir.path(), &format!("alice:{hash}\n"), "")).unwrap());
    let places = hold_every_place(&auth).await;
    let checks = start_checks(&auth, &basic("alice", "right"), 20).await;
    assert_eq!(
        auth.waiting.load(Ordering::Acquire),
        1,
        "twenty checks of one value, one in the queue for bcrypt"
    );
    drop(places);
    for check in checks {
        assert_eq!(
            check.await.unwrap().unwrap(),
            Identity::User("alice".into())
        );
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
        grants: Vec::new(),
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
