//! Polls the kernel programs' aya-log ring buffer (`--bpf-log`) and forwards each record to the
//! agent's log as soon as the buffer's fd is readable.

use meshpath_datapath::bpf_log::BpfLog;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tracing::warn;

/// Starts the poller; it owns the reader, and so keeps the log map open, for the agent's life.
pub fn spawn(log: BpfLog) -> std::io::Result<()> {
    // Deprecated for types that may close their fd while registered; `BpfLog` owns its ring
    // buffer's fd and the AsyncFd owns the `BpfLog`, so the fd outlives the registration.
    #[allow(deprecated)]
    let mut fd = AsyncFd::with_interest(log, Interest::READABLE)?;
    tokio::spawn(async move {
        loop {
            let mut guard = match fd.readable_mut().await {
                Ok(g) => g,
                Err(error) => {
                    warn!(%error, "eBPF log reader stopped");
                    return;
                }
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
    Ok(())
}
