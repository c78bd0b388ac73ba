//! The proxy's worker threads, one single-threaded runtime each, as nginx runs one event loop
//! per worker process: a connection and the upstream connections its requests open live on one
//! thread, so a request's hops (client socket, handler, upstream connection task, response)
//! wake no other thread. On one shared multi-threaded runtime every such hop could land on
//! another worker and cost a futex wake-up and a cache miss; the L7 benchmark measured the
//! same proxy at 1000 requests/s using less CPU with one worker thread than with two.
//!
//! Connections are dealt round-robin over the workers when accepted. An upstream connection
//! stays on the worker that opened it; `upstream::Endpoint` keeps idle ones per worker
//! ([`current`]) so a request reuses one of its own thread's.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// The index of the worker this thread is, if it is one.
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The worker the calling thread is (`None` off the workers, e.g. in tests on one runtime).
pub(crate) fn current() -> Option<usize> {
    WORKER.with(Cell::get)
}

/// Most workers any pool in this process has: idle-connection slots per endpoint.
static SLOTS: AtomicUsize = AtomicUsize::new(1);

/// How many per-worker slots a new endpoint gets.
pub(crate) fn slots() -> usize {
    SLOTS.load(Ordering::Relaxed)
}

#[derive(Debug, thiserror::Error)]
pub enum WorkersError {
    #[error("starting proxy worker thread {index}")]
    Spawn {
        index: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up proxy worker thread {index}")]
    Setup {
        index: usize,
        #[source]
        source: std::io::Error,
    },
}

/// Worker threads with a single-threaded runtime each. Dropping it stops them: their tasks
/// (the connections they serve) are cancelled.
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stops: std::sync::Mutex<Vec<oneshot::Sender<()>>>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("threads", &self.handles.len())
            .finish()
    }
}

impl Workers {
    /// Starts `count` (at least one) threads named `name-<i>`. Each first runs `setup` (e.g.
    /// entering the proxy's network namespace: sockets are created in their thread's), then
    /// its runtime until the pool is dropped.
    pub fn start(
        count: usize,
        name: &str,
        setup: impl Fn() -> std::io::Result<()> + Send + Sync + 'static,
    ) -> Result<Arc<Workers>, WorkersError> {
        let count = count.max(1);
        let setup = Arc::new(setup);
        let mut handles = Vec::with_capacity(count);
        let mut stops = Vec::with_capacity(count);
        for index in 0..count {
            let (handle_tx, handle_rx) = std::sync::mpsc::channel();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let setup = setup.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{index}"))
                .spawn(move || {
                    let rt = setup().and_then(|()| {
                        tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                    });
                    let rt = match rt {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = handle_tx.send(Err(e));
                            return;
                        }
                    };
                    WORKER.with(|w| w.set(Some(index)));
                    let _ = handle_tx.send(Ok(rt.handle().clone()));
                    let _ = rt.block_on(stop_rx);
                    // Blocking tasks (none on the request path) are not waited for.
                    rt.shutdown_background();
                })
                .map_err(|source| WorkersError::Spawn { index, source })?;
            let handle = handle_rx
                .recv()
                .unwrap_or_else(|_| Err(std::io::Error::other("worker thread ended")))
                .map_err(|source| WorkersError::Setup { index, source })?;
            handles.push(handle);
            stops.push(stop_tx);
        }
        SLOTS.fetch_max(count, Ordering::Relaxed);
        Ok(Arc::new(Workers {
            handles,
            next: AtomicUsize::new(0),
            stops: std::sync::Mutex::new(stops),
        }))
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// The next worker in turn: its index and runtime.
    pub fn next(&self) -> (usize, &Handle) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        (i, &self.handles[i])
    }
}

impl Workers {
    /// Stops every worker (their tasks are cancelled), even while references to the pool are
    /// left (e.g. in the accept loops running on it). Never waits: it may be called on a
    /// worker itself.
    pub fn stop(&self) {
        let stops = std::mem::take(&mut *self.stops.lock().unwrap_or_else(|p| p.into_inner()));
        for stop in stops {
            let _ = stop.send(());
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_on_their_worker_and_stop_with_the_pool() {
        let workers = Workers::start(2, "test-worker", || Ok(())).unwrap();
        assert_eq!(workers.len(), 2);
        assert!(slots() >= 2);
        let mut seen = Vec::new();
        for _ in 0..4 {
            let (index, handle) = workers.next();
            let (tx, rx) = std::sync::mpsc::channel();
            handle.spawn(async move {
                tx.send((current(), std::thread::current().name().map(str::to_owned)))
                    .unwrap();
            });
            let (on, name) = rx.recv().unwrap();
            assert_eq!(on, Some(index));
            assert_eq!(name.as_deref(), Some(&*format!("test-worker-{index}")));
            seen.push(index);
        }
        assert_eq!(seen, [0, 1, 0, 1], "round-robin");
        assert_eq!(current(), None, "the test thread is no worker");
        let (_, handle) = workers.next();
        let handle = handle.clone();
        drop(workers);
        // A stopped runtime no longer runs what is spawned on it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            handle.spawn(async move {
                let _ = tx.send(());
            });
            if rx
                .recv_timeout(std::time::Duration::from_millis(50))
                .is_err()
            {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "worker still running");
        }
    }

    #[test]
    fn a_failed_setup_is_an_error_naming_the_worker() {
        let err = Workers::start(1, "test-worker", || Err(std::io::Error::other("no netns")))
            .unwrap_err();
        assert!(matches!(err, WorkersError::Setup { index: 0, .. }), "{err}");
    }
}
