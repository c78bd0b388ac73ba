//! tc programs on the pods' host-side veths (see `meshpath_common::tc_veth`): attached to each
//! local pod's veth as the pod appears, detached (pins removed) as it goes, and `MP_TC_PODS`
//! kept equal to the pods' addresses → their host-side ifindex.
//!
//! Attached as TCX links (Linux ≥ 6.6) pinned under `<pin-dir>/links/mp_tc_veth_*-<ifindex>`,
//! new before old, so a restarting agent never leaves a pod's veth without them; before 6.6
//! a clsact filter (not pinned), as on the uplink.
//!
//! All of it runs on one thread that entered the namespace of the veths' host ends (the node's);
//! which pods exist is found from the managed cgroup's processes (`pods`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{self, NlOptions, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::Ebpf;
use meshpath_common::ipv4_be;
use meshpath_common::tc_veth::{
    VethReason, MAP_TC_FWD_NETS, MAP_TC_PODS, MAP_TC_VETH_CFG, MAP_TC_VETH_COUNTERS,
    PROG_TC_VETH_EGRESS, PROG_TC_VETH_INGRESS, VETH_CFG_FORWARD,
};
use tracing::{info, warn};

use crate::links;

#[derive(Debug, thiserror::Error)]
pub enum VethError {
    #[error("the eBPF object has no program {name}: it is older than this agent")]
    MissingProgram { name: &'static str },
    #[error("tc program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("handing program {name} to the veth thread")]
    ProgPin {
        name: &'static str,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("pinning or unpinning {}", path.display())]
    Pin {
        path: PathBuf,
        #[source]
        source: Box<crate::DatapathError>,
    },
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("interface {ifindex} is gone")]
    Gone { ifindex: u32 },
}

/// A pod's address and the ifindex of its veth's host end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodVeth {
    pub ip: Ipv4Addr,
    pub host_ifindex: u32,
}

/// The veth programs, owned apart from the object so they can live on their own thread.
pub struct VethPath {
    ingress: SchedClassifier,
    egress: SchedClassifier,
    pods: HashMap<MapData, u32, u32>,
    fwd_nets: LpmTrie<MapData, u32, u32>,
    cfg: Array<MapData, u32>,
    pin_dir: PathBuf,
    /// Host-side ifindex → how it is attached.
    attached: BTreeMap<u32, &'static str>,
    /// Pinned TCX links, kept so the pins are the only owners that matter.
    _links: Vec<PinnedLink>,
}

fn map<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    pin_dir: &Path,
    name: &'static str,
) -> Result<T, VethError> {
    let err = |source| VethError::Map { name, source };
    let data = MapData::from_pin(pin_dir.join(name)).map_err(err)?;
    let any = match name {
        MAP_TC_FWD_NETS => aya::maps::Map::LpmTrie(data),
        MAP_TC_VETH_CFG => aya::maps::Map::Array(data),
        MAP_TC_VETH_COUNTERS => aya::maps::Map::PerCpuArray(data),
        _ => aya::maps::Map::HashMap(data),
    };
    T::try_from(any).map_err(err)
}

impl VethPath {
    /// Loads both programs of `ebpf` and takes them (through a short-lived pin: aya hands a
    /// program out of an object only by reference) with the pinned maps of `pin_dir`.
    pub fn load(ebpf: &mut Ebpf, pin_dir: &Path) -> Result<Self, VethError> {
        let mut progs = Vec::new();
        for name in [PROG_TC_VETH_INGRESS, PROG_TC_VETH_EGRESS] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(VethError::MissingProgram { name })?
                .try_into()
                .map_err(|source| VethError::Program { name, source })?;
            prog.load()
                .map_err(|source| VethError::Program { name, source })?;
            // bpffs refuses names with a dot.
            let pin = pin_dir.join(format!("handover_{name}"));
            let _ = std::fs::remove_file(&pin);
            prog.pin(&pin)
                .map_err(|source| VethError::ProgPin { name, source })?;
            let owned = SchedClassifier::from_pin(&pin);
            let _ = std::fs::remove_file(&pin);
            progs.push(owned.map_err(|source| VethError::Program { name, source })?);
        }
        let egress = progs.pop().expect("two programs");
        let ingress = progs.pop().expect("two programs");
        Ok(Self {
            ingress,
            egress,
            pods: map(pin_dir, MAP_TC_PODS)?,
            fwd_nets: map(pin_dir, MAP_TC_FWD_NETS)?,
            cfg: map(pin_dir, MAP_TC_VETH_CFG)?,
            pin_dir: pin_dir.to_owned(),
            attached: BTreeMap::new(),
            _links: Vec::new(),
        })
    }

    /// The forwarding switch and the pod networks forwarded through the FIB.
    pub fn set_forward(&mut self, on: bool, nets: &[(Ipv4Addr, u8)]) -> Result<(), VethError> {
        let err = |name| move |source| VethError::Map { name, source };
        let wanted: BTreeSet<(u32, u32)> = nets
            .iter()
            .map(|(ip, len)| (u32::from(*len), ipv4_be(ip.octets())))
            .collect();
        for (len, addr) in &wanted {
            self.fwd_nets
                .insert(&Key::new(*len, *addr), 1, 0)
                .map_err(err(MAP_TC_FWD_NETS))?;
        }
        let stale: Vec<Key<u32>> = self
            .fwd_nets
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(&(k.prefix_len(), k.data())))
            .collect();
        for k in stale {
            self.fwd_nets.remove(&k).map_err(err(MAP_TC_FWD_NETS))?;
        }
        self.cfg
            .set(VETH_CFG_FORWARD, u32::from(on), 0)
            .map_err(err(MAP_TC_VETH_CFG))
    }

    /// Attaches to every veth of `pods` not yet attached, detaches from those gone, and makes
    /// `MP_TC_PODS` exactly `pods`. Runs in the veths' host namespace. A veth that cannot be
    /// attached is logged and retried at the next call; the others go on.
    pub fn sync(&mut self, pods: &[PodVeth]) -> Result<(), VethError> {
        let wanted: BTreeSet<u32> = pods.iter().map(|p| p.host_ifindex).collect();
        for ifindex in &wanted {
            if self.attached.contains_key(ifindex) {
                continue;
            }
            match self.attach(*ifindex) {
                Ok(mode) => {
                    info!(ifindex, mode, "pod veth attached");
                    self.attached.insert(*ifindex, mode);
                }
                Err(error) => {
                    warn!(ifindex, %error, source = ?std::error::Error::source(&error), "pod veth not attached")
                }
            }
        }
        // Pods whose veth is gone: their TCX links went with the device; only pins are left.
        let gone: Vec<u32> = self
            .attached
            .keys()
            .filter(|i| !wanted.contains(i))
            .copied()
            .collect();
        for ifindex in gone {
            self.attached.remove(&ifindex);
            self.unpin(ifindex)?;
            info!(ifindex, "pod veth detached");
        }
        self.unpin_strays()?;
        let err = |source| VethError::Map {
            name: MAP_TC_PODS,
            source,
        };
        let addrs: BTreeMap<u32, u32> = pods
            .iter()
            .filter(|p| self.attached.contains_key(&p.host_ifindex))
            .map(|p| (ipv4_be(p.ip.octets()), p.host_ifindex))
            .collect();
        for (ip, ifindex) in &addrs {
            if self.pods.get(ip, 0).ok() != Some(*ifindex) {
                self.pods.insert(ip, ifindex, 0).map_err(err)?;
            }
        }
        let stale: Vec<u32> = self
            .pods
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !addrs.contains_key(k))
            .collect();
        for k in stale {
            self.pods.remove(&k).map_err(err)?;
        }
        Ok(())
    }

    fn attach(&mut self, ifindex: u32) -> Result<&'static str, VethError> {
        let iface = if_name(ifindex)?;
        let mut mode = "tcx";
        for (name, dir) in [
            (PROG_TC_VETH_INGRESS, TcAttachType::Ingress),
            (PROG_TC_VETH_EGRESS, TcAttachType::Egress),
        ] {
            let prog = match dir {
                TcAttachType::Ingress => &mut self.ingress,
                _ => &mut self.egress,
            };
            let pin = pin_path(&self.pin_dir, name, ifindex);
            let perr = |source| VethError::Program { name, source };
            match prog.attach_with_options(
                &iface,
                dir,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            ) {
                Ok(id) => {
                    let link: FdLink =
                        prog.take_link(id)
                            .map_err(perr)?
                            .try_into()
                            .map_err(|source| VethError::Pin {
                                path: pin.clone(),
                                source: Box::new(crate::DatapathError::Link { name, source }),
                            })?;
                    let pinned =
                        links::pin_replacing(link, &pin).map_err(|source| VethError::Pin {
                            path: pin.clone(),
                            source: Box::new(source),
                        })?;
                    self._links.push(pinned);
                }
                Err(error) => {
                    warn!(program = name, %iface, %error, "TCX attach failed; falling back to a clsact filter");
                    mode = "clsact";
                    if let Err(error) = tc::qdisc_add_clsact(&iface) {
                        info!(%iface, %error, "clsact qdisc not added");
                    }
                    let _ = tc::qdisc_detach_program(&iface, dir, name);
                    let id = prog
                        .attach_with_options(
                            &iface,
                            dir,
                            TcAttachOptions::Netlink(NlOptions::default()),
                        )
                        .map_err(perr)?;
                    // Kept when the agent exits, like the pinned links.
                    std::mem::forget(prog.take_link(id).map_err(perr)?);
                }
            }
        }
        Ok(mode)
    }

    fn unpin(&self, ifindex: u32) -> Result<(), VethError> {
        for name in [PROG_TC_VETH_INGRESS, PROG_TC_VETH_EGRESS] {
            let pin = pin_path(&self.pin_dir, name, ifindex);
            links::detach_pinned(&pin).map_err(|source| VethError::Pin {
                path: pin.clone(),
                source: Box::new(source),
            })?;
        }
        Ok(())
    }

    /// Pins a previous agent left for veths this one does not attach to (pods gone meanwhile).
    fn unpin_strays(&self) -> Result<(), VethError> {
        let dir = self.pin_dir.join(links::LINKS_DIR);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(ifindex) = PROGS
                .iter()
                .find_map(|p| name.strip_prefix(&format!("{p}-")))
                .and_then(|i| i.parse::<u32>().ok())
            else {
                continue;
            };
            if !self.attached.contains_key(&ifindex) {
                self.unpin(ifindex)?;
            }
        }
        Ok(())
    }
}

const PROGS: [&str; 2] = [PROG_TC_VETH_INGRESS, PROG_TC_VETH_EGRESS];

fn pin_path(pin_dir: &Path, program: &str, ifindex: u32) -> PathBuf {
    links::pin_path(pin_dir, &format!("{program}-{ifindex}"))
}

/// Detaches every veth link a previous agent pinned (the veth path switched off).
pub fn detach_all(pin_dir: &Path) -> Result<(), crate::DatapathError> {
    let Ok(entries) = std::fs::read_dir(pin_dir.join(links::LINKS_DIR)) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if PROGS.iter().any(|p| name.starts_with(&format!("{p}-"))) {
            links::detach_pinned(&e.path())?;
        }
    }
    Ok(())
}

fn if_name(ifindex: u32) -> Result<String, VethError> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has IF_NAMESIZE bytes, as the call requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return Err(VethError::Gone { ifindex });
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Ok(name.to_string_lossy().into_owned())
}

/// Every veth reason's count, summed over CPUs, from the pinned counters (`None`: an object
/// without the veth path). Reasons past the end of an older agent's array are left out.
pub fn reason_counts(pin_dir: &Path) -> Option<Vec<(VethReason, u64)>> {
    let counters: PerCpuArray<MapData, u64> = map(pin_dir, MAP_TC_VETH_COUNTERS).ok()?;
    VethReason::ALL
        .iter()
        .filter_map(|r| match counters.get(&(*r as u32), 0) {
            Ok(per_cpu) => Some(Some((*r, per_cpu.iter().sum()))),
            Err(aya::maps::MapError::OutOfBounds { .. }) => None,
            Err(_) => Some(None),
        })
        .collect()
}
