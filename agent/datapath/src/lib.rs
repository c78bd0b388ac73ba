//! The kernel side as the agent sees it: loading the eBPF object, attaching its programs to the
//! managed cgroup (each behind an off switch), typed handles on the pinned maps, writing the
//! compiler's map contents into them ([`apply`]) and reading them back ([`status`]).

pub mod apply;
pub mod batch;
pub mod bpf_log;
mod capacity;
pub mod conn_reset;
mod error;
pub mod kernel_btf;
mod links;
pub mod maps;
pub mod members;
pub mod netns;
mod pins;
pub mod proxy_socks;
pub mod redirect;
pub mod redirect_scope;
pub mod rtnl_links;
pub mod sock_diag;
pub mod status;
pub mod tc_ct;
pub mod tc_limit;
pub mod tc_maps;
pub mod tc_uplink;
pub mod tc_veth;
pub mod tc_veth_pods;
pub mod tcp_metrics;
pub mod tcp_sample;

use std::fs::File;
use std::path::{Path, PathBuf};

use aya::programs::CgroupSockAddr;
use aya::{Ebpf, EbpfLoader};
use meshpath_common::{
    GLOBAL_OFF_BYTES_ACKED, GLOBAL_OFF_BYTES_RECEIVED, GLOBAL_OFF_STATE, PROG_CONNECT4,
    PROG_CONNECT6, PROG_GETPEERNAME4, PROG_GETPEERNAME6, PROG_RECVMSG4, PROG_RECVMSG6,
    PROG_SENDMSG4, PROG_SENDMSG6,
};
use tracing::{info, warn};

pub use capacity::MapCapacity;
pub use error::DatapathError;
pub use maps::DatapathMaps;

/// The object built by `cargo xtask build-ebpf`, embedded when it existed at build time.
#[cfg(meshpath_embedded_bpf)]
pub static EMBEDDED_OBJECT: Option<&[u8]> =
    Some(aya::include_bytes_aligned!(env!("MESHPATH_BPF_OBJECT")));
#[cfg(not(meshpath_embedded_bpf))]
pub static EMBEDDED_OBJECT: Option<&[u8]> = None;

/// Which sockets same-node socket redirection applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedirectScope {
    /// sk_msg not attached; no socket enters the SOCKHASH.
    Off,
    /// Only sockets known to be safe: opted-in pods' (`meshpath.io/socket-redirect`) and the
    /// node proxy's own. A redirected socket's blocking `recv()` can return EAGAIN.
    OptIn,
    /// Every TCP socket of the managed cgroups.
    All,
}

impl RedirectScope {
    pub fn is_on(self) -> bool {
        self != RedirectScope::Off
    }
}

/// Which kernel features are switched on. Off means the program is not attached at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// connect4 + getpeername4: ClusterIP translation for TCP and connected UDP.
    pub connect_lb: bool,
    /// sendmsg4 + recvmsg4: translation per datagram for unconnected UDP.
    pub udp_datagram_lb: bool,
    /// sock_ops + sk_msg: same-node socket redirection, and for which sockets.
    pub socket_redirect: RedirectScope,
    /// connect4 + sock_ops: `connectionPool.tcp.maxConnections` enforced in the kernel.
    pub connection_limits: bool,
    /// sock_ops: Istio's TCP metrics of translated connections (`tcp_metrics`).
    pub tcp_metrics: bool,
    /// How often the agent samples live connections' bytes into their pairs (milliseconds, ≥ 1).
    pub tcp_metrics_sample_ms: u32,
    /// getpeername() of a TCP socket connected through a ClusterIP shows the ClusterIP:port (as
    /// kube-proxy's DNAT does). Off: it shows the backend, and connect4 gives the socket no
    /// storage unless `tcp_metrics` needs it (that storage is most of a translated connect's cost).
    pub tcp_getpeername: bool,
    /// How long an unconnected UDP socket keeps its backend after its last datagram (seconds);
    /// 0: one pick per datagram. Needs `udp_datagram_lb`.
    pub udp_sticky_timeout_sec: u32,
    /// cgroup/sock_release: frees a connection-limit slot whatever way its socket went (connect
    /// failed before the SYN, closed in SYN_SENT, owner killed). Needs `connection_limits`.
    pub conn_limit_sock_release: bool,
    /// The programs' aya-log debug events (`--bpf-log`); off, the verifier drops their code.
    pub bpf_log: bool,
    /// How many frontends, backends and service entries the maps hold.
    pub capacity: MapCapacity,
}

impl Features {
    /// Each program and whether it should be attached.
    /// The `*6` programs serve IPv4 ClusterIPs reached through dual-stack AF_INET6 sockets.
    fn programs(self) -> [(&'static str, bool); 8] {
        let reverse = self.connect_lb || self.udp_datagram_lb;
        [
            (PROG_CONNECT4, self.connect_lb),
            (PROG_GETPEERNAME4, reverse),
            (PROG_SENDMSG4, self.udp_datagram_lb),
            (PROG_RECVMSG4, self.udp_datagram_lb),
            (PROG_CONNECT6, self.connect_lb),
            (PROG_GETPEERNAME6, reverse),
            (PROG_SENDMSG6, self.udp_datagram_lb),
            (PROG_RECVMSG6, self.udp_datagram_lb),
        ]
    }
}

/// Loaded programs and maps. Links are pinned under `<pin_dir>/links`, so the programs stay
/// attached (and traffic keeps flowing) while the agent restarts; `meshpath cleanup` removes them.
pub struct Datapath {
    _ebpf: Ebpf,
    /// The log reader when `bpf_log` is on; [`Datapath::take_log`] hands it to a poller.
    log: Option<bpf_log::BpfLog>,
    /// The live-connection sampler when `tcp_metrics` is on and the kernel supports it;
    /// [`Datapath::take_tcp_sampler`] hands it to the agent's timer.
    tcp_sampler: Option<tcp_sample::TcpSampler>,
    pub maps: DatapathMaps,
    _links: Vec<aya::programs::links::PinnedLink>,
    /// Set until [`Datapath::attach`] ran: what the sock_addr programs attach to.
    pending: Option<(File, PathBuf, PathBuf, Features)>,
}

impl Datapath {
    pub fn load(
        object: &[u8],
        pin_dir: &Path,
        cgroup: &Path,
        features: Features,
    ) -> Result<Self, DatapathError> {
        ensure_bpffs_dir(pin_dir)?;
        pins::unpin_incompatible(object, pin_dir, &features.capacity)?;
        let live_before = pins::live_before(pin_dir);
        let level = if features.bpf_log {
            bpf_log::LEVEL_DEBUG
        } else {
            bpf_log::LEVEL_OFF
        };
        let offsets = if features.tcp_metrics {
            kernel_btf::KernelBtf::from_sys_fs()
                .and_then(|btf| kernel_btf::TcpSockOffsets::from_btf(&btf))
                .inspect_err(|error| warn!(%error, "live TCP connections will report their bytes only when they close"))
                .ok()
        } else {
            None
        };
        // The loader holds the kernel's BTF as aya parsed it (about 15 MB of heap for 6.18's
        // vmlinux): dropped as soon as the object is loaded, before the TCP sampler parses it
        // again, so that no two parsed copies are alive at once.
        let mut ebpf = {
            let mut loader = EbpfLoader::new();
            loader
                .default_map_pin_directory(pin_dir)
                // Not required to exist: an object built without aya-log (`--bpf-object`) still loads.
                .override_global(bpf_log::LEVEL_GLOBAL, &level, false);
            for (name, size) in features.capacity.sizes() {
                loader.map_max_entries(name, size);
            }
            if let Some(o) = &offsets {
                loader
                    .override_global(GLOBAL_OFF_STATE, &o.state, false)
                    .override_global(GLOBAL_OFF_BYTES_ACKED, &o.bytes_acked, false)
                    .override_global(GLOBAL_OFF_BYTES_RECEIVED, &o.bytes_received, false);
            }
            loader.load(object).map_err(|source| DatapathError::Load {
                pin_dir: pin_dir.to_path_buf(),
                source: Box::new(source),
            })?
        };
        pins::init_live(&mut ebpf, &live_before)?;
        let log = if features.bpf_log {
            Some(bpf_log::BpfLog::init(&mut ebpf)?)
        } else {
            None
        };
        let cgroup_file = File::open(cgroup).map_err(|source| DatapathError::Cgroup {
            path: cgroup.to_path_buf(),
            source,
        })?;

        // Verified now (a program the kernel rejects fails the start), attached by `attach`.
        for (name, enabled) in features.programs() {
            if enabled {
                let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
                prog.load()
                    .map_err(|source| DatapathError::Program { name, source })?;
            }
        }
        let mut maps = DatapathMaps::from_ebpf(&mut ebpf)?;
        write_udp_sticky(&mut maps, features)?;
        write_tcp_getpeername(&mut maps, features)?;
        redirect::setup(
            &mut ebpf,
            &mut maps,
            &cgroup_file,
            cgroup,
            pin_dir,
            features,
        )?;
        let tcp_sampler = match offsets {
            Some(_) => aya::Btf::from_sys_fs()
                .map_err(|source| DatapathError::Btf { source })
                .and_then(|btf| tcp_sample::TcpSampler::load(&mut ebpf, &btf))
                .inspect_err(|error| warn!(%error, "TCP socket iterator not loaded: live TCP connections will report their bytes only when they close"))
                .ok(),
            None => None,
        };
        let pending = Some((
            cgroup_file,
            cgroup.to_path_buf(),
            pin_dir.to_path_buf(),
            features,
        ));
        Ok(Self {
            _ebpf: ebpf,
            log,
            tcp_sampler,
            maps,
            _links: Vec::new(),
            pending,
        })
    }

    /// Attaches the sock_addr programs, each replacing the previous agent's (see `links`); a
    /// no-op after the first call. Call once the maps hold the first model: until then the
    /// previous programs (if any) keep serving, with the maps they were loaded with, which
    /// matters when an upgrade replaced a map (`pins`) and the new one is still empty.
    pub fn attach(&mut self) -> Result<(), DatapathError> {
        let Some((cgroup_file, cgroup, pin_dir, features)) = self.pending.take() else {
            return Ok(());
        };
        for (name, enabled) in features.programs() {
            let pin = links::pin_path(&pin_dir, name);
            if !enabled {
                links::detach_pinned(&pin)?;
                info!(program = name, "feature off: program not attached");
                continue;
            }
            let prog: &mut CgroupSockAddr = program(&mut self._ebpf, name)?;
            self._links
                .push(links::attach_replacing(prog, name, &cgroup_file, &pin)?);
            info!(program = name, cgroup = %cgroup.display(), "attached");
        }
        Ok(())
    }
}

impl Datapath {
    /// The log reader (once), to poll for as long as this datapath lives.
    pub fn take_log(&mut self) -> Option<bpf_log::BpfLog> {
        self.log.take()
    }

    /// The live-connection sampler (once), for the agent to run on its timer.
    pub fn take_tcp_sampler(&mut self) -> Option<tcp_sample::TcpSampler> {
        self.tcp_sampler.take()
    }

    /// The tc path on the node's uplink (NodePort, external and load-balancer IPs): attached
    /// to `uplink` with the uplink's addresses as the node's NodePort addresses, or, with
    /// `None` (switched off), whatever a previous agent pinned is detached. Call after
    /// [`Datapath::attach`], once the maps hold the first model.
    pub fn attach_uplink(
        &mut self,
        uplink: Option<&tc_uplink::Uplink>,
        pin_dir: &Path,
    ) -> Result<Option<tc_uplink::Attached>, TcPathError> {
        let Some(uplink) = uplink else {
            tc_uplink::detach_pinned(pin_dir).map_err(Box::new)?;
            info!("tc path off: NodePort and external IPs are not served by meshpath");
            return Ok(None);
        };
        let attached = tc_uplink::attach(&mut self._ebpf, uplink, pin_dir)?;
        let maps = self.maps.tc.as_mut().ok_or(TcPathError::NoMaps)?;
        maps.set_node_ips(&attached.node_ips)?;
        info!(iface = %uplink.iface, mode = attached.mode, node_ips = ?attached.node_ips, "tc path attached");
        Ok(Some(attached))
    }

    /// The program that gives back the connection slots of counted tc flows whose conntrack
    /// entry is gone (see [`tc_limit`]), for a sweeper started without the uplink (the pod
    /// veths' flows are counted in the same record).
    pub fn tc_releaser(&mut self) -> Result<tc_limit::Releaser, tc_uplink::UplinkError> {
        tc_uplink::load_releaser(&mut self._ebpf)
    }

    /// The veth programs, taken out of the object for the agent's pod-veth thread.
    pub fn take_veth_path(
        &mut self,
        pin_dir: &Path,
    ) -> Result<tc_veth::VethPath, tc_veth::VethError> {
        tc_veth::VethPath::load(&mut self._ebpf, pin_dir)
    }
}

/// Why the tc path could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TcPathError {
    #[error(transparent)]
    Uplink(#[from] tc_uplink::UplinkError),
    #[error(transparent)]
    Maps(#[from] tc_maps::TcMapError),
    #[error("detaching the tc programs a previous agent left")]
    Detach(#[from] Box<DatapathError>),
    #[error("the eBPF object has no tc maps: it is older than this agent")]
    NoMaps,
}

/// The UDP stickiness switch: read by sendmsg per datagram, so it also takes effect over pinned
/// programs of a previous agent that already know the slot.
fn write_udp_sticky(maps: &mut DatapathMaps, features: Features) -> Result<(), DatapathError> {
    let timeout = if features.udp_datagram_lb {
        features.udp_sticky_timeout_sec
    } else {
        0
    };
    maps.config
        .set(meshpath_common::CONFIG_UDP_STICKY_SEC, timeout, 0)
        .map_err(|source| DatapathError::Map {
            name: meshpath_common::MAP_CONFIG,
            source,
        })
}

/// The TCP getpeername switch (`CONFIG_TCP_GETPEERNAME_OFF`, 0 = on so a never-written slot keeps
/// the default), read by connect4 and getpeername on every call.
fn write_tcp_getpeername(maps: &mut DatapathMaps, features: Features) -> Result<(), DatapathError> {
    maps.config
        .set(
            meshpath_common::CONFIG_TCP_GETPEERNAME_OFF,
            u32::from(!features.tcp_getpeername),
            0,
        )
        .map_err(|source| DatapathError::Map {
            name: meshpath_common::MAP_CONFIG,
            source,
        })
}

/// The program `name` of the object, as its concrete type.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, DatapathError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(DatapathError::MissingProgram { name })?
        .try_into()
        .map_err(|source| DatapathError::Program { name, source })
}

/// Removes everything `load` left behind: detaches the programs (unpins their links) and unpins
/// the maps. Safe to run when nothing is there.
pub fn cleanup(pin_dir: &Path) -> Result<(), DatapathError> {
    if !pin_dir.exists() {
        return Ok(());
    }
    let io = |path: PathBuf| move |source| DatapathError::Io { path, source };
    let links_dir = pin_dir.join(links::LINKS_DIR);
    if links_dir.exists() {
        for entry in std::fs::read_dir(&links_dir).map_err(io(links_dir.clone()))? {
            let path = entry.map_err(io(links_dir.clone()))?.path();
            links::detach_pinned(&path)?;
        }
        std::fs::remove_dir(&links_dir).map_err(io(links_dir.clone()))?;
    }
    for entry in std::fs::read_dir(pin_dir).map_err(io(pin_dir.to_path_buf()))? {
        let path = entry.map_err(io(pin_dir.to_path_buf()))?.path();
        std::fs::remove_file(&path).map_err(io(path.clone()))?;
    }
    std::fs::remove_dir(pin_dir).map_err(io(pin_dir.to_path_buf()))
}

/// Maps can only be pinned on a bpffs; say so instead of failing with EPERM deep inside aya.
fn ensure_bpffs_dir(pin_dir: &Path) -> Result<(), DatapathError> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    std::fs::create_dir_all(pin_dir).map_err(|source| DatapathError::Io {
        path: pin_dir.to_path_buf(),
        source,
    })?;
    let c_path = std::ffi::CString::new(pin_dir.as_os_str().as_encoded_bytes()).map_err(|_| {
        DatapathError::NotBpffs {
            path: pin_dir.to_path_buf(),
        }
    })?;
    // SAFETY: statfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut st) };
    if rc != 0 || st.f_type as i64 != BPF_FS_MAGIC {
        return Err(DatapathError::NotBpffs {
            path: pin_dir.to_path_buf(),
        });
    }
    Ok(())
}
