//! What `mirror.toml` may say, and what `validate` refuses.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

#[test]
fn shipped_mirror_toml_parses_to_the_defaults() {
    let text = include_str!("../../mirror.toml");
    assert_eq!(Config::parse(text).unwrap(), Config::default());
}

#[test]
fn empty_file_means_defaults() {
    assert_eq!(Config::parse("").unwrap(), Config::default());
}

#[test]
fn human_sizes_and_durations() {
    let c = Config::parse(
        "[cache]\nmax_size = \"1.5 GiB\"\ntag_ttl = \"90s\"\n[server]\nshutdown_grace = \"2m\"",
    )
    .unwrap();
    assert_eq!(c.cache.max_size.bytes(), 1024 * 1024 * 1024 * 3 / 2);
    assert_eq!(c.cache.tag_ttl, Duration::from_secs(90));
    assert_eq!(c.server.shutdown_grace, Duration::from_secs(120));
    let c = Config::parse("[cache]\nmax_size = 1000").unwrap();
    assert_eq!(c.cache.max_size.bytes(), 1000);
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let err = Config::parse("[cache]\ndir = \"x\"\nmax_sise = \"1GiB\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_sise"), "{err}");
    assert!(err.contains("line 3"), "{err}");
}

#[test]
fn bad_values_are_refused() {
    assert!(Config::parse("[cache]\nmax_size = \"lots\"").is_err());
    assert!(Config::parse("[cache]\ntag_ttl = \"soon\"").is_err());
    for parts in [0, MAX_RANGE_PARTS_LIMIT + 1] {
        let err = Config::parse(&format!("[cache]\nmax_range_parts = {parts}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cache.max_range_parts"), "{err}");
    }
    let c = Config::parse("[cache]\nmax_range_parts = 1").unwrap();
    assert_eq!(c.cache.max_range_parts, 1);
    assert!(Config::parse("[[upstream]]\nname = \"a\"\nurl = \"ftp://x\"").is_err());
    assert!(Config::parse("[[upstream]]\nname = \"a/b\"\nurl = \"http://x\"").is_err());
    let twice = "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\n\
                 [[upstream]]\nname = \"a\"\nurl = \"http://y\"";
    assert!(Config::parse(twice).is_err());
    let half_credentials = "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\nusername = \"u\"";
    assert!(Config::parse(half_credentials).is_err());
}

#[test]
fn upstream_list_replaces_the_default() {
    let c = Config::parse(
        "[[upstream]]\nname = \"ghcr.io\"\nurl = \"https://ghcr.io\"\n\
         [[upstream]]\nname = \"127.0.0.1:5001\"\nurl = \"http://127.0.0.1:5001\"",
    )
    .unwrap();
    let names: Vec<_> = c.upstreams.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["ghcr.io", "127.0.0.1:5001"]);
    assert_eq!(c.upstreams[0].connect_timeout, Duration::from_secs(5));
}

#[test]
fn tls_and_upstream_trust_settings() {
    let c = Config::parse(
        "[server.tls]\ncert = \"/etc/wharf/tls.crt\"\nkey = \"/etc/wharf/tls.key\"\n\
         [[upstream]]\nname = \"docker.io\"\nurl = \"https://regional:5000\"\n\
         ca_file = \"/etc/wharf/regional-ca.pem\"\npass_ns = true",
    )
    .unwrap();
    let tls = c.server.tls.as_ref().unwrap();
    assert_eq!(tls.cert, PathBuf::from("/etc/wharf/tls.crt"));
    assert!(c.upstreams[0].pass_ns && !c.upstreams[0].insecure);
    assert_eq!(Config::parse(&c.to_toml()).unwrap(), c);
    assert!(
        Config::parse("[server.tls]\ncert = \"/x\"").is_err(),
        "a key is required"
    );
}

#[test]
fn repository_allow_lists() {
    let c = Config::parse(
        "[[upstream]]\nname = \"docker.io\"\nurl = \"https://r\"\n\
         repositories = [\"library/*\", \"myorg/app\"]",
    )
    .unwrap();
    let patterns = c.upstreams[0].repositories.as_ref().unwrap();
    assert_eq!(patterns.len(), 2);
    assert_eq!(Config::parse(&c.to_toml()).unwrap(), c);
    let bad = "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\nrepositories = [\"Lib/*\"]";
    assert!(Config::parse(bad)
        .unwrap_err()
        .to_string()
        .contains("Lib/*"));
    let empty = "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\nrepositories = []";
    assert!(Config::parse(empty).is_err());
}

#[test]
fn client_authentication_files() {
    let c = Config::parse("[server.auth]\ntokens = \"/etc/wharf/tokens\"").unwrap();
    let auth = c.server.auth.as_ref().unwrap();
    assert_eq!(auth.tokens.as_deref(), Some(Path::new("/etc/wharf/tokens")));
    assert!(auth.htpasswd.is_none());
    assert_eq!(Config::parse(&c.to_toml()).unwrap(), c);
    assert!(Config::parse("[server.auth]\npasswords = \"/x\"").is_err());
}

#[test]
fn effective_config_round_trips() {
    let c = Config::default();
    assert_eq!(Config::parse(&c.to_toml()).unwrap(), c);
}

const CLUSTER: &str = r#"
[cluster]
node = "a"
peer_token_file = "/etc/wharf/peer-token"
[[cluster.peer]]
name = "a"
url = "http://10.0.0.1:5000"
[[cluster.peer]]
name = "b"
url = "https://wharf-b.dc1.example:5000/"
"#;

#[test]
fn a_cluster_lists_its_nodes() {
    let c = Config::parse(CLUSTER).unwrap();
    let cluster = c.cluster.unwrap();
    assert_eq!(cluster.node, "a");
    assert_eq!(cluster.peer_token_file, Path::new("/etc/wharf/peer-token"));
    assert_eq!(
        cluster.probe_interval,
        Duration::from_secs(2),
        "the default"
    );
    assert_eq!(cluster.probe_timeout, Duration::from_secs(1), "the default");
    let names: Vec<&str> = cluster.peers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(
        cluster.peers[1].url.as_str(),
        "https://wharf-b.dc1.example:5000/"
    );
}

#[test]
fn a_cluster_that_cannot_agree_on_owners_is_refused() {
    for (change, named) in [
        (("node = \"a\"", "node = \"z\""), "cluster.node \"z\""),
        (("name = \"b\"", "name = \"a\""), "listed twice"),
        (("name = \"b\"", "name = \"B\""), "a name is"),
        (
            ("https://wharf-b.dc1.example:5000/", "http://10.0.0.1:5000"),
            "url is listed twice",
        ),
        (
            ("https://wharf-b.dc1.example:5000/", "ftp://b"),
            "http:// or https://",
        ),
        (
            ("https://wharf-b.dc1.example:5000/", "http://u:p@b"),
            "credentials",
        ),
        (
            ("https://wharf-b.dc1.example:5000/", "http://b/v2/"),
            "without a path",
        ),
        (
            ("node = \"a\"", "node = \"a\"\nprobe_timeout = \"0s\""),
            "probe_timeout",
        ),
    ] {
        let text = CLUSTER.replace(change.0, change.1);
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains(named), "{change:?}: {err}");
    }
    let err = Config::parse("[cluster]\nnode = \"a\"\npeer_token_file = \"t\"\npeer = []")
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least one"), "{err}");
    let err = Config::parse("[cluster]\nnode = \"a\"\npeer = []")
        .unwrap_err()
        .to_string();
    assert!(err.contains("peer_token_file"), "{err}");
}

#[test]
fn a_shared_tier_names_its_bucket() {
    let text = "[cache.shared]\nendpoint = \"http://garage:3900\"\nbucket = \"wharf\"\n\
                access_key_file = \"/etc/wharf/s3-access-key\"\nsecret_key_file = \"/etc/wharf/s3-secret-key\"\n";
    let shared = Config::parse(text).unwrap().cache.shared.unwrap();
    assert_eq!(shared.region, "us-east-1", "the default");
    assert_eq!(shared.prefix, "");
    assert!(shared.path_style, "the default");
    assert_eq!(shared.max_size, None, "bounded by idle time alone");
    assert_eq!(shared.max_idle, Duration::from_secs(30 * 24 * 3600));
    let bounded = Config::parse(&format!("{text}max_size = \"2TiB\"\nmax_idle = \"7d\"\n"))
        .unwrap()
        .cache
        .shared
        .unwrap();
    assert_eq!(bounded.max_size.map(|s| s.bytes()), Some(2 << 40));
    assert_eq!(bounded.max_idle, Duration::from_secs(7 * 24 * 3600));
    let err = Config::parse(&format!("{text}max_size = \"0\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cache.shared.max_size"), "{err}");
    let err = Config::parse(&text.replace("http://garage:3900", "ftp://garage"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cache.shared.endpoint"), "{err}");
    let err = Config::parse(&text.replace("\"wharf\"", "\"\""))
        .unwrap_err()
        .to_string();
    assert!(err.contains("bucket"), "{err}");
}

#[test]
fn a_policy_rule_names_its_repositories_keys_and_upstream() {
    let text = "[[policy]]\nname = \"myorg-signed\"\nrepositories = [\"myorg/*\"]\n\
                keys = [\"/etc/wharf/cosign.pub\"]\n";
    let rule = &Config::parse(text).unwrap().policies[0];
    assert_eq!(rule.mode, PolicyMode::Enforce, "refusing is the default");
    assert_eq!(rule.verified_ttl, Duration::from_secs(3600));
    assert_eq!(rule.upstream, None, "every upstream");
    let err = |text: &str| Config::parse(text).unwrap_err().to_string();
    assert!(err(&format!("{text}mode = \"audit\"\n")).contains("audit"));
    assert!(err(&text.replace("[\"myorg/*\"]", "[]")).contains("repositories is empty"));
    assert!(err(&text.replace("[\"/etc/wharf/cosign.pub\"]", "[]")).contains("keys is empty"));
    assert!(err(&format!("{text}upstream = \"quay.io\"\n")).contains("quay.io"));
    assert!(err(&format!("{text}{text}")).contains("listed twice"));
    assert!(err(&text.replace("myorg/*", "MyOrg/*")).contains("MyOrg"));
}

#[test]
fn grants_name_who_and_what_and_are_checked() {
    let text = "[server.auth]\ntokens = \"/etc/wharf/tokens\"\n\n[[server.auth.grant]]\n\
                users = [\"ci\"]\ntoken_labels = [\"deploy\"]\nrepositories = [\"myorg/*\"]\n";
    let config = Config::parse(text).unwrap();
    let grant = &config.server.auth.as_ref().unwrap().grants[0];
    assert_eq!(grant.users, ["ci"]);
    assert_eq!(grant.token_labels, ["deploy"]);
    assert_eq!(grant.upstream, None, "every upstream");
    let err = |text: &str| Config::parse(text).unwrap_err().to_string();
    let nobody = text
        .replace("users = [\"ci\"]\n", "")
        .replace("token_labels = [\"deploy\"]\n", "");
    assert!(
        err(&nobody).contains("grant[0] names no user"),
        "{}",
        err(&nobody)
    );
    assert!(err(&text.replace("[\"myorg/*\"]", "[]")).contains("repositories is empty"));
    assert!(err(&format!("{text}upstream = \"quay.io\"\n")).contains("quay.io"));
    assert!(err(&format!("{text}user = \"x\"\n")).contains("user"));
}

#[test]
fn keep_warm_rules_are_checked() {
    let text = "[[sync]]\nimage = \"docker.io/org/app\"\nevery = \"10m\"\n";
    let rule = &Config::parse(text).unwrap().sync[0];
    assert_eq!(
        (rule.tags.as_str(), rule.jobs, rule.bandwidth),
        (".*", 2, None)
    );
    assert!(rule.tag_filter().unwrap().is_match("anything"));
    let tagged = Config::parse(&text.replace("\"10m\"", "\"10m\"\ntags = \"v[0-9]+\""));
    let filter = tagged.unwrap().sync[0].tag_filter().unwrap();
    assert!(
        filter.is_match("v12") && !filter.is_match("v12-rc"),
        "the whole tag"
    );
    let err = |text: &str| Config::parse(text).unwrap_err().to_string();
    assert!(err(&text.replace("org/app", "org/app:v1")).contains("without a tag"));
    assert!(err(&text.replace("docker.io", "quay.io")).contains("not a configured upstream"));
    assert!(err(&format!("{text}tags = \"v[\"\n")).contains("regular expression"));
    assert!(err(&format!("{text}platforms = [\"linux\"]\n")).contains("platform"));
    assert!(err(&text.replace("10m", "100ms")).contains("at least"));
    assert!(err(&format!("{text}jobs = 0\n")).contains("jobs"));
}
