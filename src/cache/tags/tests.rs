//! Choosing, recording and keeping tags, in memory and on disk.

use super::*;
use crate::oci::media::{DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};

fn key() -> TagKey {
    TagKey {
        upstream: "docker.io".into(),
        repo: "library/alpine".parse().unwrap(),
        tag: "3.20".parse().unwrap(),
    }
}

fn variant(body: &[u8], media_type: &str, secs: u64) -> Variant {
    asked(body, media_type, secs, Accept::parse([]))
}

fn asked(body: &[u8], media_type: &str, secs: u64, asked_with: Accept) -> Variant {
    Variant {
        digest: Digest::sha256_of(body),
        media_type: media_type.into(),
        asked_with,
        fetched_at: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        revalidate_after: None,
    }
}

#[test]
fn memory_holds_a_bounded_number_of_tags_however_many_are_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let files = Arc::new(TagFiles::open(dir.path()).unwrap());
    let table = TagTable::new(Some(files), 8);
    let recorded = key();
    table.record(recorded.clone(), variant(b"m", OCI_MANIFEST, 10), None);
    // A client asks for many tags no one has.
    for n in 0..100 {
        let mut unknown = key();
        unknown.tag = format!("unknown-{n}").parse().unwrap();
        assert_eq!(table.choose(&unknown, &Accept::parse([])), None);
    }
    assert_eq!(table.lock().len(), 8);
    assert!(!table.lock().contains(&recorded), "pushed out of memory...");
    let answer = table.choose(&recorded, &Accept::parse([])).unwrap();
    assert_eq!(
        answer.digest,
        Digest::sha256_of(b"m"),
        "...and read from disk again"
    );
}

#[test]
fn tags_unused_for_an_hour_leave_memory() {
    let table = TagTable::in_memory();
    table.record(key(), variant(b"m", OCI_MANIFEST, 10), None);
    let mut tags = table.lock();
    forget_idle(&mut tags, Instant::now() + IDLE / 2);
    assert_eq!(tags.len(), 1);
    forget_idle(&mut tags, Instant::now() + IDLE);
    assert_eq!(tags.len(), 0);
}

#[test]
fn freshness_is_age_against_ttl() {
    let v = variant(b"a", OCI_MANIFEST, 100);
    let ttl = Duration::from_secs(60);
    let at = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
    assert!(v.is_fresh(at(159), ttl));
    assert!(!v.is_fresh(at(160), ttl));
    assert!(v.is_fresh(at(50), ttl), "clock went backwards");
}

#[test]
fn index_wins_when_accepted_otherwise_the_single_manifest() {
    let table = TagTable::in_memory();
    let single_only = Accept::parse([DOCKER_MANIFEST]);
    table.record(key(), variant(b"index", OCI_INDEX, 1), None);
    table.record(
        key(),
        asked(b"amd64", DOCKER_MANIFEST, 2, single_only.clone()),
        None,
    );
    let everything = Accept::parse([]);
    assert_eq!(
        table.choose(&key(), &everything).unwrap().media_type,
        OCI_INDEX
    );
    assert_eq!(
        table.choose(&key(), &single_only).unwrap().media_type,
        DOCKER_MANIFEST
    );
    let oci_manifest_only = Accept::parse([OCI_MANIFEST]);
    assert_eq!(table.choose(&key(), &oci_manifest_only), None);
}

#[test]
fn a_fallback_manifest_is_not_served_to_clients_that_accept_indexes() {
    let table = TagTable::in_memory();
    // Only a single-platform client has asked so far: the tag may be an index.
    let single_only = Accept::parse([DOCKER_MANIFEST]);
    table.record(
        key(),
        asked(b"amd64", DOCKER_MANIFEST, 1, single_only),
        None,
    );
    assert_eq!(table.choose(&key(), &Accept::parse([])), None);
    let with_oci_index = Accept::parse([&format!("{DOCKER_MANIFEST}, {OCI_INDEX}") as &str]);
    assert_eq!(table.choose(&key(), &with_oci_index), None);
    // Asked by a client that accepts every index type, a single manifest is what the tag is.
    let table = TagTable::in_memory();
    table.record(key(), variant(b"amd64", DOCKER_MANIFEST, 1), None);
    assert!(table.choose(&key(), &with_oci_index).is_some());
}

#[test]
fn the_same_question_gets_the_same_answer_even_of_an_unaccepted_type() {
    let table = TagTable::in_memory();
    // The upstream answered an OCI manifest to a client that asked only for Docker's.
    let docker_only = Accept::parse([DOCKER_MANIFEST]);
    table.record(
        key(),
        asked(b"oci", OCI_MANIFEST, 1, docker_only.clone()),
        None,
    );
    assert!(table.choose(&key(), &docker_only).is_some());
    assert_eq!(table.choose(&key(), &Accept::parse([OCI_INDEX])), None);
}

#[test]
fn a_new_answer_replaces_the_superseded_variant() {
    let table = TagTable::in_memory();
    let old = variant(b"old", OCI_INDEX, 1);
    table.record(key(), old.clone(), None);
    // The tag moved from an index to a single manifest.
    table.record(key(), variant(b"new", OCI_MANIFEST, 2), Some(&old.digest));
    let chosen = table.choose(&key(), &Accept::parse([])).unwrap();
    assert_eq!(chosen.digest, Digest::sha256_of(b"new"));
}

#[test]
fn touch_refreshes_and_forget_drops() {
    let table = TagTable::in_memory();
    let v = variant(b"x", OCI_MANIFEST, 1);
    table.record(key(), v.clone(), None);
    let later = SystemTime::UNIX_EPOCH + Duration::from_secs(500);
    table.touch(&key(), &v.digest, later);
    assert_eq!(
        table.choose(&key(), &Accept::parse([])).unwrap().fetched_at,
        later
    );
    table.forget(&key());
    assert_eq!(table.choose(&key(), &Accept::parse([])), None);
}

#[test]
fn a_table_on_disk_outlives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let table = TagTable::open(dir.path()).unwrap();
    let single_only = Accept::parse([DOCKER_MANIFEST]);
    let index = variant(b"index", OCI_INDEX, 1);
    let single = asked(b"amd64", DOCKER_MANIFEST, 2, single_only.clone());
    table.record(key(), index.clone(), None);
    table.record(key(), single.clone(), None);
    drop(table);

    let table = TagTable::open(dir.path()).unwrap();
    assert_eq!(table.choose(&key(), &Accept::parse([])), Some(index));
    assert_eq!(table.choose(&key(), &single_only), Some(single));
    table.forget(&key());
    drop(table);
    let table = TagTable::open(dir.path()).unwrap();
    assert_eq!(table.choose(&key(), &Accept::parse([])), None);
}

#[test]
fn a_damaged_tag_file_is_treated_as_absent() {
    let dir = tempfile::tempdir().unwrap();
    let table = TagTable::open(dir.path()).unwrap();
    table.record(key(), variant(b"x", OCI_MANIFEST, 1), None);
    for fan in std::fs::read_dir(dir.path().join("tags")).unwrap() {
        for file in std::fs::read_dir(fan.unwrap().path()).unwrap() {
            std::fs::write(file.unwrap().path(), b"{ truncated").unwrap();
        }
    }
    let table = TagTable::open(dir.path()).unwrap();
    assert_eq!(table.choose(&key(), &Accept::parse([])), None);
}

#[test]
fn a_deferred_revalidation_lasts_until_its_time_or_a_confirmation() {
    let table = TagTable::in_memory();
    let v = variant(b"x", OCI_MANIFEST, 1);
    table.record(key(), v.clone(), None);
    let at = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
    assert!(table.defer(&key(), &v.digest, at(10), at(100)));
    assert!(
        !table.defer(&key(), &v.digest, at(20), at(100)),
        "already deferred"
    );
    let chosen = table.choose(&key(), &Accept::parse([])).unwrap();
    assert!(chosen.revalidation_deferred(at(99)));
    assert!(!chosen.revalidation_deferred(at(100)));
    table.touch(&key(), &v.digest, at(50));
    let chosen = table.choose(&key(), &Accept::parse([])).unwrap();
    assert!(!chosen.revalidation_deferred(at(60)));
}

#[test]
fn an_older_answer_does_not_replace_a_newer_one() {
    let table = TagTable::in_memory();
    let newer = variant(b"new", OCI_MANIFEST, 20);
    table.record(key(), newer.clone(), None);
    table.record(key(), variant(b"old", OCI_MANIFEST, 10), None);
    assert_eq!(table.choose(&key(), &Accept::parse([])), Some(newer));
}
