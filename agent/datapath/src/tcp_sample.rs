//! The TCP socket iterator that samples live connections for Istio's TCP metrics (the program is
//! described in the eBPF crate's `tcp_sample`). Loaded and linked once; each [`TcpSampler::run`]
//! opens one pass of the iterator and reads it to its end, which runs the program over every TCP
//! socket of the calling thread's network namespace (the kernel binds an iterator to the namespace
//! of the thread that opens it, so the agent calls it from a thread inside each pod's).

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use aya::programs::Iter;
use aya::{Btf, Ebpf};
use aya_obj::generated::{bpf_attach_type, bpf_cmd};
use meshpath_common::PROG_TCP_SAMPLE;

use super::DatapathError;

/// The part of `union bpf_attr` that `BPF_LINK_CREATE` reads for an iterator without parameters.
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

/// The part of `union bpf_attr` that `BPF_ITER_CREATE` reads.
#[repr(C)]
struct IterCreateAttr {
    link_fd: u32,
    flags: u32,
}

/// A linked iterator program, independent of the [`Ebpf`] it came from (the link holds it).
#[derive(Debug)]
pub struct TcpSampler {
    link: OwnedFd,
}

impl TcpSampler {
    /// Loads the iterator program against the kernel's `bpf_iter_tcp` and links it. aya 0.14's
    /// `IterLink` can open the iterator only once (`into_file` consumes it), hence a link of our
    /// own, from which every pass is opened.
    pub(crate) fn load(ebpf: &mut Ebpf, btf: &Btf) -> Result<Self, DatapathError> {
        let name = PROG_TCP_SAMPLE;
        let prog: &mut Iter = super::program(ebpf, name)?;
        prog.load("tcp", btf)
            .map_err(|source| DatapathError::Program { name, source })?;
        let prog_fd = prog
            .fd()
            .map_err(|source| DatapathError::Program { name, source })?;
        let mut attr = LinkCreateAttr {
            prog_fd: prog_fd.as_fd().as_raw_fd() as u32,
            target_fd: 0,
            attach_type: bpf_attach_type::BPF_TRACE_ITER as u32,
            flags: 0,
        };
        let link = bpf_fd(bpf_cmd::BPF_LINK_CREATE, &mut attr).map_err(|source| {
            DatapathError::Syscall {
                call: "BPF_LINK_CREATE (iter/tcp)",
                source,
            }
        })?;
        Ok(Self { link })
    }

    /// One pass over the TCP sockets of the calling thread's network namespace.
    pub fn run(&self) -> Result<(), DatapathError> {
        let mut attr = IterCreateAttr {
            link_fd: self.link.as_raw_fd() as u32,
            flags: 0,
        };
        let fd = bpf_fd(bpf_cmd::BPF_ITER_CREATE, &mut attr).map_err(|source| {
            DatapathError::Syscall {
                call: "BPF_ITER_CREATE",
                source,
            }
        })?;
        let mut iter = File::from(fd);
        // The program writes nothing: reading only drives it; a read returns 0 at the end.
        let mut buf = [0u8; 64];
        loop {
            match iter.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                // The kernel stops a read after many sockets to let others run; go on.
                Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::WouldBlock) => {}
                Err(source) => {
                    return Err(DatapathError::Syscall {
                        call: "read (TCP iterator)",
                        source,
                    })
                }
            }
        }
    }
}

/// `bpf(cmd, attr)` for a command that returns a new file descriptor.
fn bpf_fd<T>(cmd: bpf_cmd, attr: &mut T) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is a prefix of `union bpf_attr` for `cmd`, valid for its size; the kernel
    // zero-extends the rest.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a successful command of this kind returns a new descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) })
}
