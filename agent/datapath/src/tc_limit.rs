//! The userspace half of `maxConnections` on the uplink: the programs count a TCP flow when
//! they create it and give its slot back at its first FIN or RST, but a flow whose conntrack
//! entry the LRU evicts (or the sweep removes) before either is seen would hold its slot for
//! ever. Every counted flow is filed in `MP_TC_COUNTED`, a plain hash apart from the LRU; after
//! each conntrack sweep the agent walks it and, for each record whose conntrack entry is gone,
//! runs `mp_tc_ct_release` once (`BPF_PROG_TEST_RUN`). The program, not the agent, decrements
//! the shared counter: the programs update it atomically, and a read-modify-write from
//! userspace would lose their updates.

use std::os::fd::{AsRawFd, OwnedFd};

use aya::maps::{HashMap, Map, MapData, MapError};
use meshpath_common::tc::{CtKey, CtValue, ETH_PAD, MAP_TC_COUNTED, MAP_TC_CT};
use meshpath_common::SockLimit;

#[derive(Debug, thiserror::Error)]
pub enum TcLimitError {
    #[error("tc map {map}: {op} failed")]
    Map {
        map: &'static str,
        op: &'static str,
        #[source]
        source: MapError,
    },
    #[error("opening the pinned {MAP_TC_COUNTED}")]
    Pin {
        #[source]
        source: MapError,
    },
    #[error("BPF_PROG_TEST_RUN of the release program")]
    Run {
        #[source]
        source: std::io::Error,
    },
}

/// The part of `union bpf_attr` that `BPF_PROG_TEST_RUN` reads (`test`), up to `ctx_out`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
}

// The kernel reads `size_of` bytes: the fields up to `ctx_out`, laid out as in the uapi header.
const _: () = assert!(size_of::<TestRunAttr>() == 64);

/// `BPF_PROG_TEST_RUN` (`enum bpf_cmd`).
const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The loaded (never attached) `mp_tc_ct_release` program.
#[derive(Debug)]
pub struct Releaser {
    prog: OwnedFd,
}

impl Releaser {
    pub(crate) fn new(prog: OwnedFd) -> Self {
        Self { prog }
    }

    /// Releases `original`'s slot if its conntrack entry is gone; `true` if this call did.
    pub fn release(&self, original: &CtKey) -> Result<bool, TcLimitError> {
        // The test run wants at least an Ethernet header's worth of packet; the key follows it.
        let mut data = [0u8; ETH_PAD + size_of::<CtKey>()];
        // SAFETY: CtKey is repr(C) plain integers with explicit padding; reading its bytes is
        // sound.
        let bytes = unsafe {
            std::slice::from_raw_parts((original as *const CtKey).cast::<u8>(), size_of::<CtKey>())
        };
        data[ETH_PAD..].copy_from_slice(bytes);
        let mut attr = TestRunAttr {
            prog_fd: self.prog.as_raw_fd() as u32,
            data_size_in: data.len() as u32,
            data_in: data.as_ptr() as u64,
            repeat: 1,
            ..Default::default()
        };
        // SAFETY: `attr` is a prefix of `union bpf_attr` for this command, valid for its size;
        // `data` outlives the call and no output buffer is given.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &mut attr as *mut TestRunAttr,
                size_of::<TestRunAttr>() as libc::c_uint,
            )
        };
        if ret < 0 {
            return Err(TcLimitError::Run {
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(attr.retval == 1)
    }
}

/// `MP_TC_COUNTED` from the pin directory; `None` in pins older than the tc connection limit.
pub fn open_pinned(
    pin_dir: &std::path::Path,
) -> Result<Option<HashMap<MapData, CtKey, SockLimit>>, TcLimitError> {
    let path = pin_dir.join(MAP_TC_COUNTED);
    if !path.exists() {
        return Ok(None);
    }
    let data = MapData::from_pin(path).map_err(|source| TcLimitError::Pin { source })?;
    HashMap::try_from(Map::HashMap(data))
        .map(Some)
        .map_err(|source| TcLimitError::Pin { source })
}

/// Runs the release for every counted flow whose conntrack entry is gone; returns how many
/// slots came back.
pub fn release_vanished(
    counted: &HashMap<MapData, CtKey, SockLimit>,
    ct: &HashMap<MapData, CtKey, CtValue>,
    releaser: &Releaser,
) -> Result<usize, TcLimitError> {
    // Collected first: the program deletes records, and a walk the map changes under restarts.
    let mut gone = Vec::new();
    for key in counted.keys() {
        let key = key.map_err(|source| TcLimitError::Map {
            map: MAP_TC_COUNTED,
            op: "iterate",
            source,
        })?;
        match ct.get(&key, 0) {
            Ok(_) => {}
            Err(MapError::KeyNotFound) => gone.push(key),
            Err(source) => {
                return Err(TcLimitError::Map {
                    map: MAP_TC_CT,
                    op: "lookup",
                    source,
                })
            }
        }
    }
    let mut released = 0;
    for key in &gone {
        // The program looks again: the flow may have come back, or closed, meanwhile.
        if releaser.release(key)? {
            released += 1;
        }
    }
    Ok(released)
}
