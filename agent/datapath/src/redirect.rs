//! The socket programs: sock_ops (attached to the managed cgroup) and sk_msg (attached to the
//! SOCKHASH). sock_ops serves two features, each with its own switch:
//! - socket redirection (`--socket-redirect`): sk_msg is attached and sock_ops fills the SOCKHASH;
//!   `meshpath redirect off|on` pauses/resumes it at run time, for new connections only
//!   (`MP_CONFIG[CONFIG_REDIRECT]`): moving a live stream between paths could reorder its bytes;
//! - the kernel connection limit (`--connection-limits`): sock_ops releases a connection's slot
//!   when its socket closes.
//!
//! With the connection limit on, `cgroup/sock_release` is attached too (`conn_limit_sock_release`):
//! it frees a slot whose socket was released before sock_ops saw it close.
//!
//! With all off, neither program is loaded. Like the sock_addr programs, the sock_ops and
//! sock_release links are pinned and replaced, new before old (see `links`): while an agent
//! restarts, connections still close, and their slots, TCP-metrics entries and SOCKHASH entries
//! must still be released then. sk_msg is attached to the SOCKHASH, not through a link: while
//! no agent runs, messages take the TCP path.

use std::fs::File;
use std::path::Path;

use aya::maps::{Array, MapData};
use aya::programs::links::{CgroupAttachMode, FdLink};
use aya::programs::{CgroupSock, SkMsg, SockOps};
use aya::Ebpf;
use meshpath_common::{
    CONFIG_REDIRECT, MAP_CONFIG, PROG_SKMSG, PROG_SOCKOPS, PROG_SOCK_RELEASE, REDIRECT_OFF,
    REDIRECT_ON, REDIRECT_OPT_IN, REDIRECT_PAUSED, REDIRECT_STATE_MASK,
};
use tracing::info;

use super::{links, DatapathError, DatapathMaps, Features, RedirectScope};

#[derive(Debug, thiserror::Error)]
pub enum RedirectSwitchError {
    #[error("socket redirection is off in the running datapath (agent started with --socket-redirect off); nothing to switch")]
    FeatureOff,
    #[error(transparent)]
    Datapath(#[from] DatapathError),
}

pub fn setup(
    ebpf: &mut Ebpf,
    maps: &mut DatapathMaps,
    cgroup: &File,
    cgroup_path: &Path,
    pin_dir: &Path,
    features: Features,
) -> Result<(), DatapathError> {
    let sockops_pin = links::pin_path(pin_dir, PROG_SOCKOPS);
    let release_pin = links::pin_path(pin_dir, PROG_SOCK_RELEASE);
    write_mode(
        &mut maps.config,
        match features.socket_redirect {
            RedirectScope::Off => REDIRECT_OFF,
            RedirectScope::OptIn => REDIRECT_ON | REDIRECT_OPT_IN,
            RedirectScope::All => REDIRECT_ON,
        },
    )?;
    if features.socket_redirect.is_on() {
        let prog: &mut SkMsg = super::program(ebpf, PROG_SKMSG)?;
        prog.load().map_err(|source| DatapathError::Program {
            name: PROG_SKMSG,
            source,
        })?;
        prog.attach(maps.socks.fd())
            .map_err(|source| DatapathError::Program {
                name: PROG_SKMSG,
                source,
            })?;
    }
    crate::tcp_metrics::write_switch(&mut maps.config, features.tcp_metrics)?;
    if !(features.socket_redirect.is_on() || features.connection_limits || features.tcp_metrics) {
        links::detach_pinned(&sockops_pin)?;
        links::detach_pinned(&release_pin)?;
        info!("socket redirection, connection limits and TCP metrics off: sock_ops and sk_msg not attached");
        return Ok(());
    }
    let prog: &mut SockOps = super::program(ebpf, PROG_SOCKOPS)?;
    prog.load().map_err(|source| DatapathError::Program {
        name: PROG_SOCKOPS,
        source,
    })?;
    let id = prog
        .attach(cgroup, CgroupAttachMode::Single)
        .map_err(|source| DatapathError::Program {
            name: PROG_SOCKOPS,
            source,
        })?;
    let link: FdLink = prog
        .take_link(id)
        .map_err(|source| DatapathError::Program {
            name: PROG_SOCKOPS,
            source,
        })?
        .try_into()
        .map_err(|source| DatapathError::Link {
            name: PROG_SOCKOPS,
            source,
        })?;
    links::pin_replacing(link, &sockops_pin)?;
    if features.connection_limits && features.conn_limit_sock_release {
        let prog: &mut CgroupSock = super::program(ebpf, PROG_SOCK_RELEASE)?;
        prog.load().map_err(|source| DatapathError::Program {
            name: PROG_SOCK_RELEASE,
            source,
        })?;
        let id = prog
            .attach(cgroup, CgroupAttachMode::Single)
            .map_err(|source| DatapathError::Program {
                name: PROG_SOCK_RELEASE,
                source,
            })?;
        let link: FdLink = prog
            .take_link(id)
            .map_err(|source| DatapathError::Program {
                name: PROG_SOCK_RELEASE,
                source,
            })?
            .try_into()
            .map_err(|source| DatapathError::Link {
                name: PROG_SOCK_RELEASE,
                source,
            })?;
        links::pin_replacing(link, &release_pin)?;
    } else {
        links::detach_pinned(&release_pin)?;
    }
    info!(
        cgroup = %cgroup_path.display(),
        conn_limit_sock_release = features.connection_limits && features.conn_limit_sock_release,
        socket_redirect = ?features.socket_redirect,
        connection_limits = features.connection_limits,
        tcp_metrics = features.tcp_metrics,
        "sock_ops attached"
    );
    Ok(())
}

fn write_mode(config: &mut Array<MapData, u32>, mode: u32) -> Result<(), DatapathError> {
    config
        .set(CONFIG_REDIRECT, mode, 0)
        .map_err(|source| DatapathError::Map {
            name: MAP_CONFIG,
            source,
        })
}

/// The run-time switch (`meshpath redirect on|off`), for new connections only.
pub fn set_enabled(config: &mut Array<MapData, u32>, on: bool) -> Result<(), RedirectSwitchError> {
    let current = config
        .get(&CONFIG_REDIRECT, 0)
        .map_err(|source| DatapathError::Map {
            name: MAP_CONFIG,
            source,
        })?;
    if current & REDIRECT_STATE_MASK == REDIRECT_OFF {
        return Err(RedirectSwitchError::FeatureOff);
    }
    // The scope the agent chose stays.
    let state = if on { REDIRECT_ON } else { REDIRECT_PAUSED };
    Ok(write_mode(
        config,
        (current & !REDIRECT_STATE_MASK) | state,
    )?)
}
