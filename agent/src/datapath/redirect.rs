//! Same-node socket redirection (sock_ops + sk_msg), behind its own switches:
//! - `--socket-redirect false`: neither program is loaded or attached;
//! - `meshpath redirect off` at run time: the programs stay, but sock_ops stops inserting new
//!   connections (`MP_CONFIG[CONFIG_REDIRECT] = 0`). Connections already redirected stay so until
//!   they close: moving a live stream between paths could reorder its bytes.
//!
//! Unlike the sock_addr programs these links are not pinned: redirection needs a running agent.
//! If the agent exits, new connections take the normal path again, while established ones keep
//! their redirection (the kernel keeps the program with each socket).

use std::fs::File;
use std::path::Path;

use aya::maps::{Array, MapData};
use aya::programs::links::CgroupAttachMode;
use aya::programs::{SkMsg, SockOps};
use aya::Ebpf;
use meshpath_common::{CONFIG_REDIRECT, MAP_CONFIG, PROG_SKMSG, PROG_SOCKOPS};
use tracing::info;

use super::{DatapathError, DatapathMaps};

pub fn setup(ebpf: &mut Ebpf, maps: &mut DatapathMaps, cgroup: &File, cgroup_path: &Path, enabled: bool) -> Result<(), DatapathError> {
    set_enabled(&mut maps.config, enabled)?;
    if !enabled {
        info!("socket redirection off: sock_ops and sk_msg not attached");
        return Ok(());
    }
    let prog: &mut SkMsg = ebpf
        .program_mut(PROG_SKMSG)
        .ok_or(DatapathError::MissingProgram { name: PROG_SKMSG })?
        .try_into()
        .map_err(|source| DatapathError::Program { name: PROG_SKMSG, source })?;
    prog.load().map_err(|source| DatapathError::Program { name: PROG_SKMSG, source })?;
    prog.attach(maps.socks.fd()).map_err(|source| DatapathError::Program { name: PROG_SKMSG, source })?;

    let prog: &mut SockOps = ebpf
        .program_mut(PROG_SOCKOPS)
        .ok_or(DatapathError::MissingProgram { name: PROG_SOCKOPS })?
        .try_into()
        .map_err(|source| DatapathError::Program { name: PROG_SOCKOPS, source })?;
    prog.load().map_err(|source| DatapathError::Program { name: PROG_SOCKOPS, source })?;
    prog.attach(cgroup, CgroupAttachMode::Single)
        .map_err(|source| DatapathError::Program { name: PROG_SOCKOPS, source })?;
    info!(cgroup = %cgroup_path.display(), "socket redirection on: sock_ops and sk_msg attached");
    Ok(())
}

/// The run-time switch, for new connections only.
pub fn set_enabled(config: &mut Array<MapData, u32>, enabled: bool) -> Result<(), DatapathError> {
    config
        .set(CONFIG_REDIRECT, u32::from(enabled), 0)
        .map_err(|source| DatapathError::Map { name: MAP_CONFIG, source })
}
