//! The real wharf, started in this process on 127.0.0.1:0 from a `wharf::Config` built in Rust,
//! and what tests ask of it: requests, metrics, and whether a blob is committed.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use wharf::config::UpstreamConfig;
use wharf::Config;

use super::{disk, eventually, FakeRegistry};

/// The defaults, with the cache in `cache_dir`, listening on loopback (for a spawned process;
/// in-process wharfs are handed their listener), and no upstream yet.
pub fn base_config(cache_dir: &Path) -> Config {
    let mut config = Config::default();
    config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.cache.dir = cache_dir.to_owned();
    config.upstreams.clear();
    config
}

/// A config for wharf in front of `upstream`, named both "docker.io" (the default upstream) and
/// by its own host:port.
pub fn config(upstream: &FakeRegistry, cache_dir: &Path) -> Config {
    let mut config = base_config(cache_dir);
    config.upstreams = vec![
        upstream_config("docker.io", &upstream.url()),
        upstream_config(&upstream.addr.to_string(), &upstream.url()),
    ];
    config
}

/// An upstream with the defaults, called `name` and reached at `url`.
pub fn upstream_config(name: &str, url: &str) -> UpstreamConfig {
    let mut upstream = UpstreamConfig::docker_hub();
    upstream.name = name.to_owned();
    upstream.url = url.parse().unwrap();
    upstream
}

/// Applies `change` to every upstream of `config`.
pub fn each_upstream(config: &mut Config, change: impl Fn(&mut UpstreamConfig)) {
    config.upstreams.iter_mut().for_each(change);
}

/// A running wharf.
pub struct Wharf {
    pub addr: SocketAddr,
    /// "http" or "https".
    scheme: &'static str,
    pub cache: tempfile::TempDir,
    pub client: reqwest::Client,
    /// The clock tag freshness and listing reuse are decided on: it moves only when the test
    /// moves it, so no TTL can run out (or not) by the machine's speed.
    pub clock: wharf::Clock,
    stop: StopSignal,
    task: tokio::task::JoinHandle<()>,
}

/// Tells a wharf to stop (as on SIGTERM) when dropped: a test that ends without
/// [`Wharf::stop`] still stops what it started.
struct StopSignal(Option<oneshot::Sender<()>>);

impl Drop for StopSignal {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            let _ = stop.send(());
        }
    }
}

impl Wharf {
    /// Starts wharf in front of `upstream` ([`config`]), changed by `adjust`, with a new cache
    /// directory.
    pub async fn start(upstream: &FakeRegistry, adjust: impl FnOnce(&mut Config)) -> Wharf {
        Self::start_in(upstream, tempfile::tempdir().unwrap(), adjust).await
    }

    /// [`Wharf::start`] on an existing cache directory (a restart).
    pub async fn start_in(
        upstream: &FakeRegistry,
        cache: tempfile::TempDir,
        adjust: impl FnOnce(&mut Config),
    ) -> Wharf {
        let mut config = config(upstream, cache.path());
        adjust(&mut config);
        Self::start_with(config, cache).await
    }

    /// Starts wharf with `config` as it is; `cache` is kept for as long as it runs.
    pub async fn start_with(config: Config, cache: tempfile::TempDir) -> Wharf {
        Self::start_https(config, cache, reqwest::Client::new()).await
    }

    /// Starts wharf with `config`, asking it with `client` (which must trust the certificate
    /// when `config` has `[server.tls]`).
    pub async fn start_https(
        config: Config,
        cache: tempfile::TempDir,
        client: reqwest::Client,
    ) -> Wharf {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, config, cache, client).await
    }

    /// Starts wharf with `config` on a listener bound beforehand (so that other nodes' configs
    /// can name its address).
    pub async fn start_on(
        listener: TcpListener,
        config: Config,
        cache: tempfile::TempDir,
        client: reqwest::Client,
    ) -> Wharf {
        // What a config file with these settings would give: proves the config valid, and
        // that it survives printing (`check-config`, the spawned-process tests).
        let config = wharf::Config::parse(&config.to_toml()).expect("test config is valid");
        let scheme = if config.server.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let clock = wharf::Clock::manual();
        let running_clock = clock.clone();
        let task = tokio::spawn(async move {
            let stopped = async {
                let _ = stopped.await;
            };
            wharf::run_with_clock(listener, config, stopped, running_clock)
                .await
                .unwrap();
        });
        let wharf = Wharf {
            addr,
            scheme,
            cache,
            client,
            clock,
            stop: StopSignal(Some(stop)),
            task,
        };
        // Connections queue on the bound listener until the cache is open and wharf accepts:
        // once /healthz answers, the cache directory is in place. The check's connection is
        // closed at once, so it holds no place under `max_connections`.
        let r = wharf
            .client
            .get(wharf.url("/healthz"))
            .header(http::header::CONNECTION, "close")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        wharf
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// The value of one metric series, matched by name and label fragments; 0 when absent.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let text = self.get("/metrics").await.text().await.unwrap();
        super::metric_in(&text, name, labels)
    }

    /// Waits (up to 10 s) until the metric series reaches `value` exactly.
    pub async fn metric_reaches(&self, name: &str, labels: &[&str], value: f64) -> bool {
        eventually(Duration::from_secs(10), || async {
            self.metric(name, labels).await == value
        })
        .await
    }

    /// Stops wharf (as on SIGTERM) and hands back its cache directory.
    pub async fn stop(self) -> tempfile::TempDir {
        let Wharf {
            cache, stop, task, ..
        } = self;
        drop(stop);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("wharf stops within 10 s")
            .expect("wharf ran to its end");
        cache
    }

    /// Waits until no fill is in flight: every fill started so far has committed or failed.
    pub async fn fills_done(&self) -> bool {
        self.metric_reaches("wharf_fills_in_flight", &[], 0.0).await
    }

    /// Waits (up to 10 s) until `digest` is committed and no fill is in flight: a request
    /// before then could still join the finished fill instead of hitting the cache.
    pub async fn settled(&self, digest: &str) -> bool {
        eventually(Duration::from_secs(10), || async {
            self.has_blob(digest) && self.metric("wharf_fills_in_flight", &[]).await == 0.0
        })
        .await
    }

    /// Whether a committed blob file exists for `digest`.
    pub fn has_blob(&self, digest: &str) -> bool {
        disk::has_blob(self.cache.path(), digest)
    }
}
