//! The integration tests, in one binary: each starts the real wharf on 127.0.0.1:0 (in this
//! process, or the `wharf` binary as a child process) in front of a fake upstream, and asserts
//! on what clients get, on upstream request counts, and on wharf's own metrics.

mod common;

mod admin;
mod api;
mod blobs;
mod cli;
mod cluster;
mod cluster_failover;
mod cold;
mod disk_space;
mod failures;
mod grants;
mod hostile;
mod keep_warm;
mod lifecycle;
mod limits;
mod manifests;
mod memory;
mod places;
mod policy;
mod pressure;
mod process;
mod properties;
mod security;
mod shared;
mod shared_bounds;
mod tiers;
mod tls;
mod upstream;
mod warm;
mod webhooks;
