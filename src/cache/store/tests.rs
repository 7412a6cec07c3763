//! The store against a real directory: commits, eviction order, recency across restarts, files
//! changed behind its back, and manifests.

use super::*;
use std::io::Write;

fn store(dir: &Path, max_size: u64) -> Store {
    Store::open(dir, max_size, Metrics::new()).unwrap()
}

/// Sets an entry's recorded last use, as an earlier run would have left it.
fn set_used(store: &Store, digest: &Digest, used: SystemTime) {
    let file = File::open(store.path(&EntryKey::blob(digest))).unwrap();
    file.set_modified(used).unwrap();
}

fn put(store: &Store, bytes: &[u8]) -> Digest {
    let digest = Digest::sha256_of(bytes);
    let (temp, mut file) = store.temp_file().unwrap();
    file.write_all(bytes).unwrap();
    assert_eq!(
        store
            .commit(&temp, &file, &EntryKey::blob(&digest))
            .unwrap(),
        Committed::Stored
    );
    assert!(!temp.exists());
    digest
}

#[test]
fn commit_moves_into_place_and_reopen_totals_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), 1000);
    let digest = put(&s, b"hello");
    assert_eq!(s.open_blob(&digest).unwrap().unwrap().size, 5);
    assert_eq!((s.usage().bytes, s.usage().entries), (5, 1));

    let (leftover, _) = s.temp_file().unwrap();
    drop(s);
    let s = store(dir.path(), 1000);
    assert!(!leftover.exists(), "temp files are removed at start-up");
    assert_eq!((s.usage().bytes, s.usage().entries), (5, 1));
}

#[test]
fn committed_bytes_stay_under_max_size_least_recently_used_going_first() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), 30);
    let a = put(&s, &[b'a'; 10]);
    let b = put(&s, &[b'b'; 10]);
    let c = put(&s, &[b'c'; 10]);
    assert!(s.open_blob(&a).unwrap().is_some(), "a hit is a use");
    let d = put(&s, &[b'd'; 10]);
    assert!(
        s.open_blob(&b).unwrap().is_none(),
        "b was least recently used"
    );
    assert!(!s.path(&EntryKey::blob(&b)).exists());
    for kept in [&a, &c, &d] {
        assert!(s.open_blob(kept).unwrap().is_some());
    }
    assert_eq!(s.usage().bytes, 30);
}

#[test]
fn an_entry_larger_than_the_cache_is_not_stored_and_evicts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), 30);
    let a = put(&s, &[b'a'; 20]);
    let big = [b'x'; 31];
    let (temp, mut file) = s.temp_file().unwrap();
    file.write_all(&big).unwrap();
    let digest = Digest::sha256_of(&big);
    assert_eq!(
        s.commit(&temp, &file, &EntryKey::blob(&digest)).unwrap(),
        Committed::TooLarge
    );
    assert!(!temp.exists());
    assert!(s.open_blob(&a).unwrap().is_some());
    assert!(s.open_blob(&digest).unwrap().is_none());
}

#[test]
fn an_evicted_blob_stays_readable_to_its_reader() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), 10);
    let a = put(&s, &[b'a'; 10]);
    let open = s.open_blob(&a).unwrap().unwrap();
    put(&s, &[b'b'; 10]);
    assert!(!s.path(&EntryKey::blob(&a)).exists(), "evicted");
    let mut buf = [0u8; 10];
    open.file.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, [b'a'; 10], "still readable through the open file");
}

#[test]
fn a_file_changed_outside_wharf_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), 1000);
    let a = put(&s, b"original");
    fs::write(s.path(&EntryKey::blob(&a)), b"truncated").unwrap();
    assert!(s.open_blob(&a).unwrap().is_none());
    assert!(!s.path(&EntryKey::blob(&a)).exists());
    let b = put(&s, b"removed");
    fs::remove_file(s.path(&EntryKey::blob(&b))).unwrap();
    assert!(s.open_blob(&b).unwrap().is_none());
    assert_eq!(s.usage().entries, 0);
}

#[test]
fn recency_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), 30);
    let a = put(&s, &[b'a'; 10]);
    let b = put(&s, &[b'b'; 10]);
    let c = put(&s, &[b'c'; 10]);
    // Ages written as a restart would find them: a was used last.
    let at = |secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    for (digest, used) in [(&a, 300), (&b, 100), (&c, 200)] {
        set_used(&s, digest, at(used));
    }
    drop(s);
    let s = store(dir.path(), 30);
    put(&s, &[b'd'; 10]);
    assert!(
        s.open_blob(&b).unwrap().is_none(),
        "b was least recently used"
    );
    assert!(s.open_blob(&a).unwrap().is_some());
    assert!(s.open_blob(&c).unwrap().is_some());
}

#[test]
fn a_hit_is_written_to_disk_as_the_files_mtime() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), 30);
    let a = put(&s, b"a");
    let path = s.path(&EntryKey::blob(&a));
    set_used(&s, &a, SystemTime::UNIX_EPOCH);
    drop(s);
    let s = store(dir.path(), 30);
    s.open_blob(&a).unwrap().unwrap();
    let mtime = fs::metadata(&path).unwrap().modified().unwrap();
    assert!(mtime > SystemTime::now() - Duration::from_secs(60));
}

#[test]
fn a_lower_max_size_is_enforced_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), 100);
    for n in 0..5u8 {
        put(&s, &[n; 10]);
    }
    drop(s);
    let s = store(dir.path(), 25);
    assert_eq!(s.usage().bytes, 20);
    assert_eq!(scan::scan(dir.path()).unwrap().entries.len(), 2);
}

#[test]
fn idle_entries_are_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), 100);
    let old = put(&s, b"old");
    let path = s.path(&EntryKey::blob(&old));
    set_used(&s, &old, SystemTime::now() - Duration::from_secs(3600));
    drop(s);
    let s = store(dir.path(), 100);
    let new = put(&s, b"new");
    s.evict_idle(Duration::from_secs(60));
    assert!(!path.exists());
    assert!(s.open_blob(&new).unwrap().is_some());
}

#[test]
fn manifests_round_trip_and_outlive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), 1 << 20);
    let body = bytes::Bytes::from_static(b"{ \"schemaVersion\": 2 }\n");
    let m = RawManifest {
        digest: Digest::sha256_of(&body),
        media_type: "application/vnd.oci.image.manifest.v1+json; charset=utf-8".into(),
        body,
    };
    s.write_manifest(&m).unwrap();
    assert_eq!(s.read_manifest(&m.digest).unwrap(), Some(m.clone()));
    drop(s);
    let s = store(dir.path(), 1 << 20);
    assert_eq!(s.read_manifest(&m.digest).unwrap(), Some(m));
}

#[test]
fn a_damaged_manifest_file_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), 1 << 20);
    let m = RawManifest {
        digest: Digest::sha256_of(b"{}"),
        media_type: "application/json".into(),
        body: bytes::Bytes::from_static(b"{}"),
    };
    s.write_manifest(&m).unwrap();
    let path = s.path(&EntryKey::manifest(&m.digest));
    fs::write(&path, b"application/json\n{ }").unwrap();
    assert_eq!(s.read_manifest(&m.digest).unwrap(), None);
    assert!(!path.exists());
    assert_eq!(s.usage().entries, 0);
}
