//! Registry webhook payloads (the first byte picks distribution, Harbor or Docker Hub): any
//! body parses or is refused without a panic, and every push it yields names a repository and
//! a tag that are valid and print as they parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf::server::webhooks::payloads::{parse, WebhookKind};

fuzz_target!(|input: &[u8]| {
    let Some((&which, body)) = input.split_first() else {
        return;
    };
    let kind = match which % 3 {
        0 => WebhookKind::Distribution,
        1 => WebhookKind::Harbor,
        _ => WebhookKind::DockerHub,
    };
    let Ok(pushes) = parse(kind, body) else {
        return;
    };
    for push in pushes {
        let repo = push.repo.to_string();
        assert_eq!(
            repo.parse::<wharf::oci::RepoName>().ok().as_ref(),
            Some(&push.repo)
        );
        let tag = push.tag.to_string();
        assert_eq!(
            tag.parse::<wharf::oci::Tag>().ok().as_ref(),
            Some(&push.tag)
        );
        if let Some(host) = &push.host {
            assert!(!host.is_empty());
        }
    }
});
