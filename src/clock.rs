//! Wall-clock time as wharf's own logic reads it (tag freshness, listing reuse), passed in as
//! a value so tests can drive it: a manual clock moves only when told, so a TTL test needs no
//! sleep and cannot be missed by a busy machine.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

#[derive(Clone, Default)]
pub struct Clock {
    /// `None`: the system's clock.
    manual: Option<Arc<Mutex<SystemTime>>>,
}

impl Clock {
    /// The system's clock.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// A clock that starts at the system's time now and moves only by [`Clock::advance`].
    pub fn manual() -> Clock {
        Clock {
            manual: Some(Arc::new(Mutex::new(SystemTime::now()))),
        }
    }

    pub fn now(&self) -> SystemTime {
        match &self.manual {
            None => SystemTime::now(),
            Some(at) => *at.lock().expect("lock poisoned"),
        }
    }

    /// Moves a manual clock forward (and every copy of it). The system's clock cannot be moved.
    pub fn advance(&self, by: Duration) {
        let at = self
            .manual
            .as_ref()
            .expect("only a manual clock can be moved");
        *at.lock().expect("lock poisoned") += by;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_its_copies_with_it() {
        let clock = Clock::manual();
        let copy = clock.clone();
        let start = clock.now();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(copy.now(), start);
        clock.advance(Duration::from_secs(60));
        assert_eq!(copy.now(), start + Duration::from_secs(60));
    }

    #[test]
    fn the_system_clock_follows_the_system() {
        let before = SystemTime::now();
        assert!(Clock::system().now() >= before);
    }
}
