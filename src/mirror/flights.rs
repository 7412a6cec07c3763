//! Coalescing of identical concurrent upstream requests: the first caller's work runs in its own
//! task (so it completes even if that caller goes away) and every caller gets its result.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

pub struct Flights<K, V> {
    running: Arc<Mutex<HashMap<K, watch::Receiver<Option<V>>>>>,
}

impl<K, V> Default for Flights<K, V> {
    fn default() -> Self {
        Flights {
            running: Arc::default(),
        }
    }
}

/// Whether a caller led the work or followed work already under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Led,
    Followed,
}

impl<K, V> Flights<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Runs `work` unless the same key is already running; `None` if the work panicked.
    pub async fn run<F, Fut>(&self, key: K, work: F) -> (Option<V>, Role)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        let (mut rx, role) = {
            let mut running = self.running.lock().expect("lock poisoned");
            if let Some(rx) = running.get(&key) {
                (rx.clone(), Role::Followed)
            } else {
                let (tx, rx) = watch::channel(None);
                running.insert(key.clone(), rx.clone());
                let fut = work();
                let done = Done {
                    running: self.running.clone(),
                    key: Some(key),
                };
                tokio::spawn(async move {
                    // Dropped however the work ends (a panic included): the key is free again.
                    let _done = done;
                    let value = fut.await;
                    let _ = tx.send(Some(value));
                });
                (rx, Role::Led)
            }
        };
        let value = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|v| v.clone());
        (value, role)
    }
}

/// Forgets a flight's key when its work ends.
struct Done<K: Eq + Hash, V> {
    running: Arc<Mutex<HashMap<K, watch::Receiver<Option<V>>>>>,
    key: Option<K>,
}

impl<K: Eq + Hash, V> Drop for Done<K, V> {
    fn drop(&mut self) {
        if let (Some(key), Ok(mut running)) = (self.key.take(), self.running.lock()) {
            running.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let flights = Arc::new(Flights::<&'static str, usize>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for _ in 0..10 {
            let (flights, runs) = (flights.clone(), runs.clone());
            handles.push(tokio::spawn(async move {
                flights
                    .run("k", || async move {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        runs.fetch_add(1, Ordering::SeqCst) + 42
                    })
                    .await
            }));
        }
        let mut led = 0;
        for h in handles {
            let (value, role) = h.await.unwrap();
            assert_eq!(value, Some(42));
            led += usize::from(role == Role::Led);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(led, 1);
        // Finished flights are forgotten: the next call runs again.
        let (value, role) = flights.run("k", || async { 7 }).await;
        assert_eq!((value, role), (Some(7), Role::Led));
    }

    #[tokio::test]
    async fn finished_and_failed_flights_leave_no_entry_behind() {
        let flights = Flights::<u32, u32>::default();
        for key in 0..100 {
            flights.run(key, || async move { key }).await;
        }
        flights
            .run(100, || async { panic!("the work failed") })
            .await;
        // A key is forgotten as its task ends, just after its callers got the value.
        for _ in 0..100 {
            if flights.running.lock().unwrap().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "flights left behind: {}",
            flights.running.lock().unwrap().len()
        );
    }

    #[tokio::test]
    async fn a_flight_whose_work_panics_does_not_block_its_key() {
        let flights = Flights::<&'static str, usize>::default();
        let (value, _) = flights
            .run("k", || async { panic!("the work failed") })
            .await;
        assert_eq!(value, None);
        let (value, role) = flights.run("k", || async { 1 }).await;
        assert_eq!((value, role), (Some(1), Role::Led));
    }
}
