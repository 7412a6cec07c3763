//! HTTP: the accept loop (HTTP/1.1 and h2c on one port, bounded graceful shutdown), routing,
//! handlers, and the one error → response mapping. Asks the mirror for everything; knows
//! neither the cache nor the upstream client.

mod activity;
pub mod admin;
pub mod auth;
mod blob_body;
mod connection;
mod handlers;
mod listen;
mod multipart;
pub mod range;
mod rate;
mod reload;
mod request;
mod response;
pub mod route;
mod sendfile;
mod state;
mod tls;
pub mod webhooks;

pub use listen::{serve, Listening};
pub use response::Body;
pub use state::{Access, AppState, Client, Surface};
pub use tls::{Tls, TlsError};
