//! The `wharf` command: clap parses the arguments, the config is loaded and checked, then one
//! of serve, check-config, warm or cache runs. The only place errors become `anyhow`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use wharf::oci::manifest::Platform;
use wharf::oci::ImageRef;

/// wharf: a pull-through caching mirror for container registries.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the mirror.
    Serve {
        /// mirror.toml; without it, the built-in defaults (mirror Docker Hub on 0.0.0.0:5000).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides `server.listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Validate a config file and print the effective configuration.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Pull images into a cache ahead of need: through a running wharf (--server), or into the
    /// cache directory of --config / --dir. Exits non-zero if anything failed.
    Warm {
        /// Images, e.g. `alpine:3.20`, `ghcr.io/org/app@sha256:...`.
        images: Vec<String>,
        /// A file with more images, one per line (`#` starts a comment).
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
        /// The running wharf to warm, e.g. `http://wharf.local:5000`.
        #[arg(long, value_name = "URL", conflicts_with_all = ["config", "dir"])]
        server: Option<url::Url>,
        /// CA bundle to trust when --server is an HTTPS wharf with a private CA.
        #[arg(long, value_name = "FILE", requires = "server")]
        ca_file: Option<PathBuf>,
        /// mirror.toml: warm its cache directory through its upstreams.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The cache directory to warm; overrides the config's.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Platforms of multi-platform images to warm (default: this machine's).
        #[arg(long = "platform", value_name = "OS/ARCH[/VARIANT]")]
        platforms: Vec<wharf::oci::manifest::Platform>,
        /// Every platform an image has.
        #[arg(long, conflicts_with = "platforms")]
        all_platforms: bool,
        /// Blobs fetched at once.
        #[arg(long, default_value_t = 4)]
        jobs: usize,
    },
    /// Inspect or tidy a cache directory; safe while the server runs.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
        /// mirror.toml, for `cache.dir` and `cache.max_size`.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        /// The cache directory; overrides the config's.
        #[arg(long, global = true, conflicts_with = "shared")]
        dir: Option<PathBuf>,
        /// The shared tier of --config (`[cache.shared]`) instead of the local directory; safe
        /// while nodes read from it (recently used blobs are never removed).
        #[arg(long, global = true, requires = "config")]
        shared: bool,
    },
}

#[derive(Subcommand)]
enum CacheAction {
    /// Entries, bytes, and the oldest and newest use.
    Stats,
    /// The cached images: each tag's digest, platforms, size on disk and last use.
    Images,
    /// Re-hash every entry; remove (and list) those that do not match their digest. Exits with
    /// status 1 if any were found.
    Verify,
    /// Remove least recently used entries until at most SIZE is cached (the config's max_size
    /// by default); with --shared, also what is idle longer than its max_idle.
    Prune {
        #[arg(long, value_name = "SIZE")]
        max_size: Option<wharf::config::Size>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => {
            let config = wharf::Config::load(Some(&config))?;
            // The credential files are part of the configuration: a bad line must show here,
            // not at the next start.
            if let Some(auth) = &config.server.auth {
                wharf::server::auth::Authenticator::load(auth)?;
            }
            if let Some(admin) = &config.admin {
                wharf::server::admin::AdminTokens::load(&admin.tokens)?;
                wharf::server::webhooks::Webhooks::load(admin)?;
            }
            if let Some(cluster) = &config.cluster {
                wharf::cluster::read_token(&cluster.peer_token_file)?;
            }
            if let Some(shared) = &config.cache.shared {
                wharf::cache::Cache::check_shared(shared)?;
            }
            wharf::policy::Policies::load(&config.policies)?;
            for warning in config.warnings() {
                eprintln!("warning: {warning}");
            }
            print!("{}", config.to_toml());
            Ok(())
        }
        Command::Cache {
            action,
            config,
            dir,
            shared,
        } => {
            let config = wharf::Config::load(config.as_deref())?;
            if shared {
                let Some(shared) = &config.cache.shared else {
                    anyhow::bail!("the config has no [cache.shared]");
                };
                return tokio::runtime::Runtime::new()?.block_on(shared_command(action, shared));
            }
            let max_size = config.cache.max_size;
            cache_command(action, &dir.unwrap_or(config.cache.dir), max_size)
        }
        Command::Warm {
            images,
            from_file,
            server,
            ca_file,
            config,
            dir,
            platforms,
            all_platforms,
            jobs,
        } => {
            let images = image_list(images, from_file.as_deref())?;
            let target = match server {
                Some(url) => wharf::warm::Destination::Server { url, ca_file },
                None => {
                    let mut config = wharf::Config::load(config.as_deref())?;
                    config.cache.dir = dir.unwrap_or(config.cache.dir);
                    wharf::warm::Destination::CacheDir(Box::new(config))
                }
            };
            let platforms = match (all_platforms, platforms.is_empty()) {
                (true, _) => wharf::warm::Platforms::All,
                (false, true) => wharf::warm::Platforms::These(vec![Platform::host()]),
                (false, false) => wharf::warm::Platforms::These(platforms),
            };
            let report = tokio::runtime::Runtime::new()?
                .block_on(wharf::warm::run(target, &images, &platforms, jobs))?;
            if !report.failures.is_empty() {
                eprintln!("failed:");
                for failure in &report.failures {
                    eprintln!("  {failure}");
                }
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Serve { config, listen } => {
            let mut config = wharf::Config::load(config.as_deref())?;
            if let Some(listen) = listen {
                config.server.listen = listen;
            }
            let _log_flushed_on_exit = wharf::telemetry::init();
            for warning in config.warnings() {
                tracing::warn!("{warning}");
            }
            tokio::runtime::Runtime::new()?.block_on(serve(config))
        }
    }
}

/// The images named on the command line and in `--from-file`, parsed.
fn image_list(
    mut names: Vec<String>,
    from_file: Option<&std::path::Path>,
) -> anyhow::Result<Vec<ImageRef>> {
    if let Some(file) = from_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        names.extend(
            text.lines()
                .map(|l| l.split('#').next().unwrap_or_default().trim())
                .filter(|l| !l.is_empty())
                .map(str::to_owned),
        );
    }
    anyhow::ensure!(!names.is_empty(), "no images to warm");
    names
        .iter()
        .map(|n| n.parse::<ImageRef>().map_err(anyhow::Error::from))
        .collect()
}

fn cache_command(
    action: CacheAction,
    dir: &std::path::Path,
    configured_max_size: wharf::config::Size,
) -> anyhow::Result<()> {
    use wharf::cache::maintenance;
    if !dir.is_dir() {
        eprintln!("Error: {} is not a cache directory", dir.display());
        // As for any failure to verify; the other commands fail with status 1.
        std::process::exit(if matches!(action, CacheAction::Verify) {
            2
        } else {
            1
        });
    }
    let context = || format!("cache directory {}", dir.display());
    match action {
        CacheAction::Stats => print!("{}", maintenance::stats(dir).with_context(context)?),
        CacheAction::Images => print!(
            "{}",
            wharf::cache::images::on_disk(dir).with_context(context)?
        ),
        CacheAction::Prune { max_size } => {
            print!(
                "{}",
                maintenance::prune(dir, max_size.unwrap_or(configured_max_size).bytes())
                    .with_context(context)?
            )
        }
        CacheAction::Verify => {
            let verified = maintenance::verify(dir).with_context(context);
            exit_on_damage(verified, |report| !report.removed.is_empty());
        }
    }
    Ok(())
}

/// Prints what `verify` found. Status 1 says damage was found (and removed), so a script can
/// tell it from a cache that could not be verified at all: status 2.
fn exit_on_damage<R: std::fmt::Display>(
    verified: anyhow::Result<R>,
    damaged: impl FnOnce(&R) -> bool,
) {
    match verified {
        Ok(report) => {
            print!("{report}");
            if damaged(&report) {
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("Error: {e:?}");
            std::process::exit(2);
        }
    }
}

/// `wharf cache ... --shared`: the same commands on the shared tier's bucket.
async fn shared_command(
    action: CacheAction,
    config: &wharf::config::SharedConfig,
) -> anyhow::Result<()> {
    let tier = wharf::cache::shared::SharedTier::new(config, &wharf::metrics::Metrics::new())?;
    let context = || format!("shared tier {} bucket {}", config.endpoint, config.bucket);
    match action {
        CacheAction::Stats => print!("{}", tier.stats().await.with_context(context)?),
        // The bucket holds blobs alone: which image a blob belongs to is in each node's tags.
        CacheAction::Images => anyhow::bail!(
            "the shared tier holds blobs, not images: run images on a node's cache directory"
        ),
        CacheAction::Prune { max_size } => {
            let max_size = max_size.map(|s| s.bytes());
            print!("{}", tier.expire(max_size).await.with_context(context)?)
        }
        CacheAction::Verify => {
            let verified = tier.verify().await.with_context(context);
            exit_on_damage(verified, |report| !report.removed.is_empty());
        }
    }
    Ok(())
}

async fn serve(config: wharf::Config) -> anyhow::Result<()> {
    raise_open_file_limit(config.server.limits.max_connections);
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    wharf::run(listener, config, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown signal received");
}

/// Lifts the soft limit on open files to the hard one, as the default soft limit (often 1024)
/// is below what `max_connections` and the cache need; warns if even the hard limit is short.
fn raise_open_file_limit(max_connections: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
        }
    }
    let current = getrlimit(Resource::Nofile).current;
    // Each connection takes a descriptor, and a blob being served or filled one or two more.
    let wanted = (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(256);
    if current.is_some_and(|n| n < wanted) {
        tracing::warn!(
            open_file_limit = current,
            max_connections,
            "the open-file limit is low for server.limits.max_connections; accepts may fail"
        );
    }
}
