//! aya-log for the kernel programs (`--bpf-log`): the level global the programs check before
//! logging, and the reader of their log ring buffer, which forwards records to `tracing`.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use aya::Ebpf;
use aya_log::EbpfLogger;

/// aya-log's level global in the eBPF object, and the levels meshpath sets it to.
pub const LEVEL_GLOBAL: &str = "AYA_LOG_LEVEL";
pub const LEVEL_OFF: u8 = 0;
/// `aya_log_common::Level::Debug`.
pub const LEVEL_DEBUG: u8 = 4;

#[derive(Debug, thiserror::Error)]
#[error("starting the eBPF log reader")]
pub struct BpfLogError {
    #[source]
    source: aya_log::Error,
}

/// Forwards aya-log records to `tracing` under the `meshpath::bpf` target.
pub struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        // Info: the switch itself is the opt-in, so the events show under the default filter.
        tracing::info!(target: "meshpath::bpf", program = record.target(), "{}", record.args());
    }

    fn flush(&self) {}
}

/// The log ring buffer's reader. Must live as long as the programs: dropping it closes the map
/// (aya-log takes it out of the object), and a program loaded afterwards would fail.
pub struct BpfLog(EbpfLogger<ToTracing>);

impl BpfLog {
    pub fn init(ebpf: &mut Ebpf) -> Result<Self, BpfLogError> {
        EbpfLogger::init_with_logger(ebpf, ToTracing)
            .map(BpfLog)
            .map_err(|source| BpfLogError { source })
    }

    /// Forwards every record waiting in the ring buffer; call when its fd is readable.
    pub fn flush(&mut self) {
        self.0.flush();
    }
}

impl AsRawFd for BpfLog {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl AsFd for BpfLog {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}
