use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

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
    /// Inspect or tidy a cache directory; safe while the server runs.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
        /// mirror.toml, for `cache.dir` and `cache.max_size`.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        /// The cache directory; overrides the config's.
        #[arg(long, global = true)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CacheAction {
    /// Entries, bytes, and the oldest and newest use.
    Stats,
    /// Re-hash every entry; remove (and list) those that do not match their digest. Exits with
    /// status 1 if any were found.
    Verify,
    /// Remove least recently used entries until at most SIZE is cached.
    Prune {
        #[arg(long, value_name = "SIZE")]
        max_size: wharf::config::Size,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => {
            let config = wharf::Config::load(Some(&config))?;
            print!("{}", config.to_toml());
            Ok(())
        }
        Command::Cache {
            action,
            config,
            dir,
        } => {
            let config = wharf::Config::load(config.as_deref())?;
            let dir = dir.unwrap_or(config.cache.dir);
            cache_command(action, &dir)
        }
        Command::Serve { config, listen } => {
            let mut config = wharf::Config::load(config.as_deref())?;
            if let Some(listen) = listen {
                config.server.listen = listen;
            }
            let _log_flushed_on_exit = wharf::telemetry::init();
            tokio::runtime::Runtime::new()?.block_on(serve(config))
        }
    }
}

fn cache_command(action: CacheAction, dir: &std::path::Path) -> anyhow::Result<()> {
    use wharf::cache::maintenance;
    anyhow::ensure!(dir.is_dir(), "{} is not a cache directory", dir.display());
    let context = || format!("cache directory {}", dir.display());
    match action {
        CacheAction::Stats => print!("{}", maintenance::stats(dir).with_context(context)?),
        CacheAction::Prune { max_size } => {
            print!(
                "{}",
                maintenance::prune(dir, max_size.bytes()).with_context(context)?
            )
        }
        CacheAction::Verify => {
            let report = maintenance::verify(dir).with_context(context)?;
            print!("{report}");
            if !report.removed.is_empty() {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}

async fn serve(config: wharf::Config) -> anyhow::Result<()> {
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
