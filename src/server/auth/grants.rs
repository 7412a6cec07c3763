//! Who a client is once authenticated, and which repositories its grants let it pull. A user
//! and a token are different clients even when the user's name is the token's label.

use std::fmt;
use std::sync::Arc;

use crate::config::GrantConfig;
use crate::oci::{RepoName, RepoPattern};

/// An authenticated client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// An htpasswd user, by name.
    User(Arc<str>),
    /// A bearer of a token, by the token's label.
    Token(Arc<str>),
}

/// As the access log names it: the user's name, or the token's label.
impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::User(name) => f.write_str(name),
            Identity::Token(label) => write!(f, "token {label}"),
        }
    }
}

struct Grant {
    users: Vec<String>,
    token_labels: Vec<String>,
    repositories: Vec<RepoPattern>,
    upstream: Option<String>,
}

impl Grant {
    fn names(&self, who: &Identity) -> bool {
        match who {
            Identity::User(name) => self.users.iter().any(|u| **u == **name),
            Identity::Token(label) => self.token_labels.iter().any(|l| **l == **label),
        }
    }
}

/// The `[[server.auth.grant]]` rules. None: every authenticated client may pull everything.
#[derive(Default)]
pub struct Grants {
    rules: Vec<Grant>,
}

impl Grants {
    pub fn new(configs: &[GrantConfig]) -> Grants {
        Grants {
            rules: configs
                .iter()
                .map(|g| Grant {
                    users: g.users.clone(),
                    token_labels: g.token_labels.clone(),
                    repositories: g.repositories.clone(),
                    upstream: g.upstream.clone(),
                })
                .collect(),
        }
    }

    /// Whether `who` may pull `repo` of the upstream named `upstream`.
    pub fn allow(&self, who: &Identity, upstream: &str, repo: &RepoName) -> bool {
        self.rules.is_empty()
            || self.rules.iter().any(|g| {
                g.names(who)
                    && g.upstream.as_deref().map_or(true, |u| u == upstream)
                    && g.repositories.iter().any(|p| p.matches(repo))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_what_its_grants_give_and_a_user_is_not_a_token() {
        let grant =
            |users: &[&str], labels: &[&str], repos: &[&str], upstream: Option<&str>| GrantConfig {
                users: users.iter().map(|s| s.to_string()).collect(),
                token_labels: labels.iter().map(|s| s.to_string()).collect(),
                repositories: repos.iter().map(|r| r.parse().unwrap()).collect(),
                upstream: upstream.map(str::to_owned),
            };
        let grants = Grants::new(&[
            grant(&["ci"], &[], &["myorg/*"], None),
            grant(&[], &["ci"], &["other/app"], Some("ghcr.io")),
        ]);
        let user = Identity::User("ci".into());
        let token = Identity::Token("ci".into());
        let repo = |r: &str| r.parse::<RepoName>().unwrap();
        assert!(grants.allow(&user, "docker.io", &repo("myorg/app")));
        assert!(!grants.allow(&user, "ghcr.io", &repo("other/app")));
        assert!(!grants.allow(&token, "docker.io", &repo("myorg/app")));
        assert!(grants.allow(&token, "ghcr.io", &repo("other/app")));
        assert!(
            !grants.allow(&token, "docker.io", &repo("other/app")),
            "another upstream"
        );
        assert!(Grants::default().allow(&token, "docker.io", &repo("any/thing")));
    }
}
