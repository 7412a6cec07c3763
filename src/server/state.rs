//! What every request shares: the mirror, the metrics, and who may use the pull API.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::admin::forward::Forwarder;
use super::admin::AdminTokens;
use super::webhooks::Webhooks;
use super::{auth, rate, route};
use crate::cluster::Peers;
use crate::error::ClientError;
use crate::keep_warm::KeepWarm;
use crate::metrics::Metrics;
use crate::mirror::{Mirror, Origin};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub mirror: Arc<Mirror>,
    pub metrics: Metrics,
    /// The keep-warm rules, for the status view and pushed tags.
    pub keep_warm: Arc<KeepWarm>,
    pub access: Arc<Access>,
    /// The most parts a multi-range blob answer may have (`cache.max_range_parts`).
    pub max_range_parts: usize,
}

/// Who may use the pull API: by source address, how often, and by credentials.
pub struct Access {
    /// `None`: every address.
    allow_from: Option<Vec<ipnet::IpNet>>,
    /// `None`: no limit.
    rate: Option<rate::RateLimiter>,
    /// `None`: no credentials needed.
    pub(super) authenticator: Option<Arc<auth::Authenticator>>,
    /// The other nodes of this node's cluster, if it is in one.
    peers: Option<Arc<Peers>>,
    /// Who may use the admin API; `None`: it is not served.
    pub(super) admin: Option<Arc<AdminTokens>>,
    /// Who may call the webhooks; `None`: they are not served.
    pub(super) webhooks: Option<Arc<Webhooks>>,
    /// Where refreshes and purges are passed on to (`[admin] forward_to`).
    pub(super) forwarder: Option<Arc<Forwarder>>,
    /// Which repositories each authenticated client may pull.
    grants: auth::Grants,
    /// What a request that names no registry is for, for the grants.
    default_upstream: String,
}

impl Access {
    pub fn new(
        allow_from: Option<Vec<ipnet::IpNet>>,
        rate: &crate::config::RateLimit,
        authenticator: Option<auth::Authenticator>,
        peers: Option<Peers>,
    ) -> Access {
        Access {
            allow_from,
            rate: rate::RateLimiter::new(rate),
            authenticator: authenticator.map(Arc::new),
            peers: peers.map(Arc::new),
            admin: None,
            webhooks: None,
            forwarder: None,
            grants: auth::Grants::default(),
            default_upstream: String::new(),
        }
    }

    /// Lets each authenticated client pull only what `grants` give it; `default_upstream` is
    /// the upstream a request naming no registry is for.
    pub fn with_grants(mut self, grants: auth::Grants, default_upstream: &str) -> Access {
        self.grants = grants;
        self.default_upstream = default_upstream.to_owned();
        self
    }

    /// Serves the admin API to the bearers of `tokens`, and the webhooks to the bearers of
    /// their secret.
    pub fn with_admin(
        mut self,
        tokens: Option<AdminTokens>,
        webhooks: Option<Webhooks>,
        forwarder: Option<Forwarder>,
    ) -> Access {
        self.admin = tokens.map(Arc::new);
        self.webhooks = webhooks.map(Arc::new);
        self.forwarder = forwarder.map(Arc::new);
        self
    }

    /// Whether `client` may have `route`, and as whom (`None` without authentication). Health
    /// checks answer everyone, so probes work from wherever they come; the operational listener
    /// is bound to an internal address by the operator and not filtered either. The address
    /// and the rate are checked before credentials, so that a refused or flooding client costs
    /// no password hashing. A request that names a peer node (`peer`) must be that peer's,
    /// with the peer token and from its address; then neither the address list, the rate nor
    /// client credentials apply (peers are the operator's own nodes); only a peer may reach
    /// the peers' records.
    pub(super) async fn admits(
        &self,
        client: Client,
        route: &route::Route,
        authorization: Option<&[u8]>,
        peer: Option<&[u8]>,
    ) -> Result<Admitted, ClientError> {
        let client_as = |user| Admitted {
            user,
            origin: Origin::Client,
        };
        // The admin API's own credential, on whichever listener serves it; nothing else
        // admits to it.
        if matches!(route, route::Route::Admin(_)) {
            let admin = self.admin.as_ref().ok_or(ClientError::NotFound)?;
            let who = admin
                .who(authorization)
                .ok_or(ClientError::AdminUnauthenticated)?;
            return Ok(client_as(Some(format!("admin:{who}").into())));
        }
        if let route::Route::Webhook(hook) = route {
            let webhooks = self.webhooks.as_ref().ok_or(ClientError::NotFound)?;
            return match webhooks.admits(hook, authorization) {
                true => Ok(client_as(Some("webhook".into()))),
                false => Err(ClientError::AdminUnauthenticated),
            };
        }
        if client.surface == Surface::Operations
            || matches!(route, route::Route::Health | route::Route::Ready)
        {
            return Ok(client_as(None));
        }
        // A v4 client of a dual-stack socket shows as ::ffff:a.b.c.d.
        let ip: IpAddr = client.peer.ip().to_canonical();
        if let (Some(peers), Some(name)) = (&self.peers, peer) {
            return match peers.admit(name, authorization, ip) {
                Some(name) => Ok(Admitted {
                    user: Some(format!("peer:{name}").into()),
                    origin: Origin::Peer,
                }),
                None => Err(ClientError::Unauthenticated),
            };
        }
        // The peers' own records are no client's business.
        if matches!(route, route::Route::ListedBy { .. }) {
            return Err(ClientError::NotFound);
        }
        let listed = self
            .allow_from
            .as_ref()
            .map_or(true, |nets| nets.iter().any(|net| net.contains(&ip)));
        if !listed {
            return Err(ClientError::AddressNotAllowed);
        }
        if let Some(limiter) = &self.rate {
            limiter
                .take(ip)
                .map_err(|wait| ClientError::TooManyRequests {
                    retry_after_secs: wait.as_secs() + 1,
                })?;
        }
        let Some(authenticator) = &self.authenticator else {
            return Ok(client_as(None));
        };
        // Boxed, so that every request's future is not as large as a login's.
        let who = Box::pin(authenticator.authenticate(authorization))
            .await
            .map_err(|e| match e {
                auth::AuthError::Refused => ClientError::Unauthenticated,
                auth::AuthError::Busy => ClientError::TooManyRequests {
                    retry_after_secs: 1,
                },
            })?;
        if let Some(target) = route.target() {
            let upstream = target.registry.as_deref().unwrap_or(&self.default_upstream);
            if !self.grants.allow(&who, upstream, &target.repo) {
                return Err(ClientError::NotGranted {
                    who: who.to_string(),
                    repo: format!("{upstream}/{}", target.repo),
                });
            }
        }
        Ok(client_as(Some(who.to_string().into())))
    }
}

/// Who a request was admitted as: the user, for the log (`None` without authentication), and
/// whether a client or a peer node asked.
#[derive(Debug)]
pub(super) struct Admitted {
    pub user: Option<Arc<str>>,
    pub origin: Origin,
}

/// Who sent a request, and to which listener.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub peer: SocketAddr,
    pub surface: Surface,
}

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// The pull API and the operational endpoints.
    All,
    /// The pull API and health checks: `/metrics` has a listener of its own.
    Pull,
    /// `/metrics`, `/healthz` and `/readyz` only.
    Operations,
}

impl Surface {
    pub(super) fn serves(self, route: &route::Route) -> bool {
        use route::Route;
        match self {
            Surface::All => true,
            Surface::Pull => !matches!(route, Route::Metrics | Route::Admin(_)),
            Surface::Operations => matches!(
                route,
                Route::Metrics | Route::Health | Route::Ready | Route::Admin(_)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AuthConfig, RateLimit};
    use base64::Engine as _;

    #[tokio::test]
    async fn the_address_is_checked_before_any_password_is_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let htpasswd = dir.path().join("htpasswd");
        let hash = bcrypt::hash("right", 4).unwrap();
        std::fs::write(&htpasswd, format!("alice:{hash}\n")).unwrap();
        let files = AuthConfig {
            htpasswd: Some(htpasswd),
            tokens: None,
            grants: Vec::new(),
        };
        let access = Access::new(
            Some(vec!["10.0.0.0/8".parse().unwrap()]),
            &RateLimit::default(),
            Some(auth::Authenticator::load(&files).unwrap()),
            None,
        );
        let client = Client {
            peer: "127.0.0.1:40000".parse().unwrap(),
            surface: Surface::All,
        };
        for password in ["right", "wrong"] {
            let value = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("alice:{password}"))
            );
            let admitted = access
                .admits(client, &route::Route::Base, Some(value.as_bytes()), None)
                .await;
            assert!(
                matches!(admitted, Err(ClientError::AddressNotAllowed)),
                "{admitted:?}"
            );
        }
        let authenticator = access.authenticator.as_ref().unwrap();
        assert_eq!(authenticator.password_checks(), 0);
    }
}
