//! Optional concurrency limit with a bounded wait queue (`--max-concurrent-requests`,
//! `--queue-size`, `--queue-timeout-secs`).
//!
//! A request takes a permit; if none is free it waits in the queue, unless the queue already
//! holds `queue_size` requests (429). A request that waits longer than the timeout gets 408. The
//! permit travels with the response body and is released when the body ends or is dropped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Result, RouterError};

#[derive(Debug)]
pub struct Limiter {
    sem: Arc<Semaphore>,
    waiting: AtomicUsize,
    queue_size: usize,
    timeout: Duration,
}

struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Limiter {
    pub fn new(max_concurrent: usize, queue_size: usize, timeout: Duration) -> Self {
        Self {
            sem: Arc::new(Semaphore::new(max_concurrent.max(1))),
            waiting: AtomicUsize::new(0),
            queue_size,
            timeout,
        }
    }

    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit> {
        if let Ok(p) = self.sem.clone().try_acquire_owned() {
            return Ok(p);
        }
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.queue_size {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(RouterError::QueueFull);
        }
        let _w = Waiting(&self.waiting);
        match tokio::time::timeout(self.timeout, self.sem.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(RouterError::QueueFull),
            Err(_) => Err(RouterError::QueueTimeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_queue_is_429_and_long_wait_is_408() {
        let l = Arc::new(Limiter::new(1, 1, Duration::from_millis(100)));
        let held = l.acquire().await.unwrap();
        let l2 = l.clone();
        let queued = tokio::spawn(async move { l2.acquire().await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(matches!(l.acquire().await, Err(RouterError::QueueFull)));
        assert!(matches!(
            queued.await.unwrap(),
            Err(RouterError::QueueTimeout)
        ));
        drop(held);
        assert!(l.acquire().await.is_ok());
    }

    #[tokio::test]
    async fn queued_request_gets_the_released_permit() {
        let l = Arc::new(Limiter::new(1, 4, Duration::from_secs(5)));
        let held = l.acquire().await.unwrap();
        let l2 = l.clone();
        let queued = tokio::spawn(async move { l2.acquire().await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        assert!(queued.await.unwrap().is_ok());
    }
}
