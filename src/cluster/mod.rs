//! The wharf nodes of one datacenter acting as one mirror: who they are, which of them owns
//! each digest (the rendezvous ring), and which are up.

pub mod members;
pub mod peers;
pub mod ring;

pub use members::{MemberState, Members};
pub use peers::{read_token, Peers, SetupError, LISTED_BY, PEER_HEADER};
