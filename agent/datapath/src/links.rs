//! Pinned program links: attach the new program before detaching the old one, so a restarting
//! agent never leaves a window where connects to a ClusterIP go untranslated. For that window both
//! programs run; the second sees an already-translated (non-service) address and lets it pass.
//! (cgroup bpf_links always stack like BPF_F_ALLOW_MULTI; the kernel refuses the flag itself on a
//! link, hence `CgroupAttachMode::Single`, which passes no flag.)

use std::fs::File;
use std::path::{Path, PathBuf};

use aya::programs::links::{CgroupAttachMode, FdLink, PinnedLink};
use aya::programs::CgroupSockAddr;

use super::DatapathError;

pub const LINKS_DIR: &str = "links";

pub fn pin_path(pin_dir: &Path, program: &str) -> PathBuf {
    pin_dir.join(LINKS_DIR).join(program)
}

pub fn attach_replacing(
    prog: &mut CgroupSockAddr,
    name: &'static str,
    cgroup: &File,
    pin: &Path,
) -> Result<PinnedLink, DatapathError> {
    let id = prog
        .attach(cgroup, CgroupAttachMode::Single)
        .map_err(|source| DatapathError::Program { name, source })?;
    let link: FdLink = prog
        .take_link(id)
        .map_err(|source| DatapathError::Program { name, source })?
        .try_into()
        .map_err(|source| DatapathError::Link { name, source })?;
    pin_replacing(link, pin)
}

/// Pins `link` (already attached) at `pin` in place of the link pinned there before, which is
/// detached only now, so the old and the new program overlap rather than leave a gap.
pub fn pin_replacing(link: FdLink, pin: &Path) -> Result<PinnedLink, DatapathError> {
    detach_pinned(pin)?;
    let dir = pin.parent().expect("link pin path has a parent");
    std::fs::create_dir_all(dir).map_err(|source| DatapathError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    link.pin(pin).map_err(|source| DatapathError::Pin {
        path: pin.to_path_buf(),
        source,
    })
}

/// Detaches the program behind a pinned link, if there is one.
pub fn detach_pinned(pin: &Path) -> Result<(), DatapathError> {
    if !pin.exists() {
        return Ok(());
    }
    let old = PinnedLink::from_pin(pin).map_err(|source| DatapathError::OpenLink {
        path: pin.to_path_buf(),
        source,
    })?;
    // Unpinning removes the last reference but the fd we hold; dropping it detaches.
    drop(old.unpin().map_err(|source| DatapathError::Io {
        path: pin.to_path_buf(),
        source,
    })?);
    Ok(())
}
