//! Field offsets of kernel structs, read from the running kernel's BTF (`/sys/kernel/btf/vmlinux`).
//! The BPF programs are built without CO-RE relocations, so where one must read a kernel struct
//! the agent finds the field here and hands its offset to the program as a global. Only what that
//! needs is parsed: the type section's layout, struct/union members (through anonymous ones) and
//! names. Format: Documentation/bpf/btf.rst.

use std::path::Path;

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
/// Nesting of anonymous structs/unions followed before giving up.
const MAX_DEPTH: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not BTF data or truncated ({what})")]
    Malformed { what: &'static str },
    #[error("unknown BTF type kind {kind} (type {id})")]
    UnknownKind { kind: u32, id: u32 },
    #[error("struct {name} not in the kernel's BTF")]
    NoStruct { name: String },
    #[error("{strukt}.{field} not in the kernel's BTF, or a bit field")]
    NoField { strukt: String, field: String },
}

/// One struct or union: its members as (name offset, type id, bit offset).
struct Composite {
    name_off: u32,
    members: Vec<(u32, u32, u32)>,
}

/// The composite types of a BTF blob, indexed by type id, with its string section.
pub struct KernelBtf {
    types: Vec<Option<Composite>>,
    strings: Vec<u8>,
}

impl KernelBtf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        let u32_at = |o: usize| {
            data.get(o..o + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let header = |what| BtfError::Malformed { what };
        if u16_at(0) != Some(MAGIC) {
            return Err(header("magic"));
        }
        let hdr_len = u32_at(4).ok_or(header("header"))? as usize;
        let type_off = u32_at(8).ok_or(header("header"))? as usize;
        let type_len = u32_at(12).ok_or(header("header"))? as usize;
        let str_off = u32_at(16).ok_or(header("header"))? as usize;
        let str_len = u32_at(20).ok_or(header("header"))? as usize;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(header("string section"))?
            .to_vec();
        let start = hdr_len + type_off;
        let end = start + type_len;
        if data.len() < end {
            return Err(header("type section"));
        }
        // Type id 0 is `void`; ids count from 1 in section order.
        let mut types = vec![None];
        let mut o = start;
        while o < end {
            let id = types.len() as u32;
            let name_off = u32_at(o).ok_or(header("type"))?;
            let info = u32_at(o + 4).ok_or(header("type"))?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            o += 12;
            let extra = match kind {
                // ptr, fwd, typedef, volatile, const, restrict, func, float, type tag
                2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,
                // int, var, decl tag
                1 | 14 | 17 => 4,
                // array
                3 => 12,
                // enum, func proto
                6 | 13 => vlen * 8,
                // struct, union, datasec, enum64
                4 | 5 | 15 | 19 => vlen * 12,
                _ => return Err(BtfError::UnknownKind { kind, id }),
            };
            let composite = if kind == KIND_STRUCT || kind == KIND_UNION {
                let mut members = Vec::with_capacity(vlen);
                for m in 0..vlen {
                    let mo = o + m * 12;
                    let (name, ty, off) = (
                        u32_at(mo).ok_or(header("member"))?,
                        u32_at(mo + 4).ok_or(header("member"))?,
                        u32_at(mo + 8).ok_or(header("member"))?,
                    );
                    // With kind_flag, the top 8 bits are a bit field's size (0 for a plain field).
                    let off = if kind_flag {
                        if off >> 24 != 0 {
                            u32::MAX
                        } else {
                            off & 0xff_ffff
                        }
                    } else {
                        off
                    };
                    members.push((name, ty, off));
                }
                Some(Composite { name_off, members })
            } else {
                None
            };
            types.push(composite);
            o += extra;
        }
        Ok(Self { types, strings })
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|b| *b == 0).unwrap_or(rest.len())]
    }

    /// Byte offset of `field` in struct `strukt`, looking through anonymous members.
    pub fn field_offset(&self, strukt: &str, field: &str) -> Result<u32, BtfError> {
        let id = self
            .types
            .iter()
            .position(|t| {
                t.as_ref()
                    .is_some_and(|c| self.name(c.name_off) == strukt.as_bytes())
            })
            .ok_or_else(|| BtfError::NoStruct {
                name: strukt.to_owned(),
            })?;
        self.find(id as u32, field.as_bytes(), 0)
            .filter(|bits| bits % 8 == 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoField {
                strukt: strukt.to_owned(),
                field: field.to_owned(),
            })
    }

    /// Bit offset of `field` in composite `id`, or in an anonymous composite member of it.
    fn find(&self, id: u32, field: &[u8], depth: usize) -> Option<u32> {
        let c = self.types.get(id as usize)?.as_ref()?;
        for &(name, ty, off) in &c.members {
            if off == u32::MAX {
                continue;
            }
            let member_name = self.name(name);
            if member_name == field {
                return Some(off);
            }
            if member_name.is_empty() && depth < MAX_DEPTH {
                if let Some(inner) = self.find(ty, field, depth + 1) {
                    return Some(off + inner);
                }
            }
        }
        None
    }
}

/// Where the TCP sampling iterator reads a socket's state and byte counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSockOffsets {
    pub state: u32,
    pub bytes_acked: u32,
    pub bytes_received: u32,
}

impl TcpSockOffsets {
    /// `sock_common` sits at the start of `tcp_sock` (through `inet_connection_sock`, `inet_sock`
    /// and `sock`, each the first member of the next), so its offsets are the socket's.
    pub fn from_btf(btf: &KernelBtf) -> Result<Self, BtfError> {
        Ok(Self {
            state: btf.field_offset("sock_common", "skc_state")?,
            bytes_acked: btf.field_offset("tcp_sock", "bytes_acked")?,
            bytes_received: btf.field_offset("tcp_sock", "bytes_received")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_kernels_tcp_sock_offsets() {
        let btf = match KernelBtf::from_sys_fs() {
            Ok(b) => b,
            Err(BtfError::Read { .. }) => {
                eprintln!("skipped: no /sys/kernel/btf/vmlinux");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let o = TcpSockOffsets::from_btf(&btf).unwrap();
        // skc_state follows two 4-byte unions' worth of addresses, the hash, ports and family in
        // every kernel since BTF exists; the counters lie well inside tcp_sock, 8-byte aligned.
        assert_eq!(o.state, 18, "{o:?}");
        assert!(
            o.bytes_acked > 512 && o.bytes_acked.is_multiple_of(8),
            "{o:?}"
        );
        assert!(
            o.bytes_received > 512 && o.bytes_received.is_multiple_of(8),
            "{o:?}"
        );
        assert_ne!(o.bytes_acked, o.bytes_received);
        assert!(matches!(
            btf.field_offset("tcp_sock", "no_such_field"),
            Err(BtfError::NoField { .. })
        ));
    }

    #[test]
    fn rejects_what_is_not_btf() {
        assert!(matches!(
            KernelBtf::parse(b"not btf at all, certainly"),
            Err(BtfError::Malformed { what: "magic" })
        ));
    }
}
