//! Many map writes in one `bpf(BPF_MAP_UPDATE_BATCH)` call (Linux 5.6+): the full sync writes some
//! 300 000 entries at 10 000 Services, and one syscall per entry costs more than the kernel's
//! own insert. Falls back to one `BPF_MAP_UPDATE_ELEM` per entry where the kernel or the map
//! type has no batch update, or when switched off.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use aya::maps::{HashMap, IterableMap, MapData, MapError};
use aya::Pod;

/// Entries per call: bounds the kernel's time per syscall (it reschedules between entries
/// anyway) and the key and value arrays built for it.
const CHUNK: usize = 8192;

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Whether writes go in batches (`--map-batch-writes`); on by default.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// The batch part of `union bpf_attr` (linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Writes every `(key, value)` into `map`, in order, in as few syscalls as the kernel allows;
/// returns how many. Entries are taken [`CHUNK`] at a time, so no copy of them all is made.
pub fn insert_all<K: Pod, V: Pod>(
    map: &mut HashMap<MapData, K, V>,
    entries: impl IntoIterator<Item = (K, V)>,
) -> Result<usize, MapError> {
    let mut batch = ENABLED.load(Ordering::Relaxed);
    let mut entries = entries.into_iter();
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    let mut n = 0;
    loop {
        keys.clear();
        values.clear();
        for (k, v) in entries.by_ref().take(CHUNK) {
            keys.push(k);
            values.push(v);
        }
        if keys.is_empty() {
            return Ok(n);
        }
        n += keys.len();
        if batch {
            match update_batch(map.map().fd().as_fd(), &keys, &values) {
                Ok(()) => continue,
                // No batch update here: this chunk and the rest one by one (rewriting what
                // the call may have written is harmless, the values are the same).
                Err(e) if unsupported(&e) => batch = false,
                Err(io_error) => {
                    return Err(MapError::SyscallError(aya::sys::SyscallError {
                        call: "bpf_map_update_batch",
                        io_error,
                    }))
                }
            }
        }
        for (k, v) in keys.iter().zip(&values) {
            map.insert(k, v, 0)?;
        }
    }
}

fn unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS)
    ) || e.raw_os_error() == Some(524) // ENOTSUPP, the kernel-internal code bpf() returns
}

fn update_batch<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> std::io::Result<()> {
    debug_assert_eq!(keys.len(), values.len());
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: fd.as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: `attr` is the batch layout of `union bpf_attr`, its size passed with it; the key
    // and value arrays hold `count` entries of the map's key and value sizes (aya checked those
    // sizes against the map when it was opened as `HashMap<K, V>`) and outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &mut attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
