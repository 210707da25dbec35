//! Graceful drain: stop accepting, let what is open finish, close what is left at a deadline.
//!
//! Every connection and tunnel holds a [`Watch`]. When shutdown begins they are told to wind
//! down (HTTP/2 GOAWAY, HTTP/1 `connection: close` after the current request); the shutdown
//! waits until every `Watch` is dropped or the deadline passes, and then tells the rest to stop
//! at once.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// Owned by the waypoint; hands out watches and runs the drain.
pub struct Drain {
    alive: mpsc::Sender<()>,
    done: mpsc::Receiver<()>,
    shutdown: watch::Receiver<bool>,
    force: watch::Sender<bool>,
}

/// Held by each connection or tunnel for as long as it runs.
#[derive(Clone)]
pub struct Watch {
    // Never sent on: the channel closes once every clone is gone.
    _alive: mpsc::Sender<()>,
    shutdown: watch::Receiver<bool>,
    force: watch::Receiver<bool>,
}

impl Drain {
    /// Draining begins when `shutdown` turns true.
    pub fn new(shutdown: watch::Receiver<bool>) -> Drain {
        let (alive, done) = mpsc::channel(1);
        Drain {
            alive,
            done,
            shutdown,
            force: watch::Sender::new(false),
        }
    }

    pub fn watch(&self) -> Watch {
        Watch {
            _alive: self.alive.clone(),
            shutdown: self.shutdown.clone(),
            force: self.force.subscribe(),
        }
    }

    /// Call once shutdown has been signalled. Waits up to `deadline` for every watch to be
    /// dropped; then forces the rest closed and gives them a moment to go. Returns whether
    /// everything finished in time.
    pub async fn finish(self, deadline: Duration) -> bool {
        let Drain {
            alive,
            mut done,
            force,
            ..
        } = self;
        drop(alive);
        if tokio::time::timeout(deadline, done.recv()).await.is_ok() {
            return true;
        }
        tracing::warn!(
            deadline_ms = deadline.as_millis() as u64,
            "drain deadline passed; closing the remaining connections"
        );
        let _ = force.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(1), done.recv()).await;
        false
    }
}

impl Watch {
    /// Resolves once shutdown has begun.
    pub async fn draining(&mut self) {
        // An error means the waypoint is gone: that is shutdown too.
        let _ = self.shutdown.wait_for(|s| *s).await;
    }

    /// Resolves once the drain deadline has passed.
    pub async fn forced(&mut self) {
        let _ = self.force.wait_for(|f| *f).await;
    }

    pub fn is_draining(&self) -> bool {
        *self.shutdown.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_watches_then_forces() {
        let (tx, rx) = watch::channel(false);
        let drain = Drain::new(rx);
        let mut quick = drain.watch();
        let mut slow = drain.watch();
        let quick_task = tokio::spawn(async move {
            quick.draining().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        });
        let slow_task = tokio::spawn(async move {
            slow.draining().await;
            slow.forced().await;
        });
        tx.send(true).unwrap();
        let start = std::time::Instant::now();
        assert!(!drain.finish(Duration::from_millis(200)).await);
        assert!(start.elapsed() >= Duration::from_millis(200));
        quick_task.await.unwrap();
        tokio::time::timeout(Duration::from_secs(1), slow_task)
            .await
            .expect("forced watch returns")
            .unwrap();
    }

    #[tokio::test]
    async fn finishes_early_when_everything_is_done() {
        let (tx, rx) = watch::channel(false);
        let drain = Drain::new(rx);
        let mut w = drain.watch();
        let task = tokio::spawn(async move { w.draining().await });
        tx.send(true).unwrap();
        assert!(drain.finish(Duration::from_secs(10)).await);
        task.await.unwrap();
    }
}
