//! A TCP link in front of a server that a test can cut, as a crash or a partition would: once
//! cut, every connection through it is dropped and new ones are refused.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Link {
    cut: watch::Sender<bool>,
    accepting: JoinHandle<()>,
}

impl Link {
    /// Forwards every connection to `listener` on to `target`.
    pub fn start(listener: TcpListener, target: SocketAddr) -> Link {
        let (cut, _) = watch::channel(false);
        let on_cut = cut.clone();
        let accepting = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let mut cut = on_cut.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    // Both streams are dropped when the link is cut.
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Link { cut, accepting }
    }

    /// Drops every connection and stops listening.
    pub fn cut(&self) {
        self.accepting.abort();
        self.cut.send_replace(true);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.cut();
    }
}
