//! Socket-local storage (`BPF_MAP_TYPE_SK_STORAGE`): per-socket values reached from the socket
//! itself. A lookup follows the socket's storage list (a cache slot per map), with no hashing and
//! no bucket lock; the kernel frees the value with the socket, so no entry outlives its socket
//! and nothing ages out under load, as an LRU's entries do.
//!
//! aya-ebpf's `SkStorage` takes only a sock_addr context and cannot be pinned, and these values
//! are read from sock_addr, sock_ops and sk_msg programs and must survive an agent restart; so
//! the map is declared here as a BTF map definition of our own (the kernel requires BTF for the
//! key and value types of this map type), with libbpf's `pinning` field, which aya reads too.

use core::ptr;

use aya_ebpf::bindings::{bpf_map_type::BPF_MAP_TYPE_SK_STORAGE, bpf_sock, BPF_F_NO_PREALLOC};
use aya_ebpf::helpers::generated::bpf_sk_storage_get;

/// libbpf's `LIBBPF_PIN_BY_NAME`.
const PIN_BY_NAME: usize = 1;
/// `BPF_SK_STORAGE_GET_F_CREATE`.
const F_CREATE: u64 = 1;

/// The BTF map definition: each field's type carries a value (an array length or a pointee),
/// as libbpf's `__uint`/`__type` macros encode them. Never read at run time.
#[repr(C)]
pub struct SkStorage<T> {
    r#type: *const [i32; BPF_MAP_TYPE_SK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
    pinning: *const [i32; PIN_BY_NAME],
}

// SAFETY: the fields are null placeholders, never dereferenced; the kernel owns the map.
unsafe impl<T> Sync for SkStorage<T> {}

impl<T> SkStorage<T> {
    pub const fn new() -> Self {
        Self {
            r#type: ptr::null(),
            key: ptr::null(),
            value: ptr::null(),
            max_entries: ptr::null(),
            map_flags: ptr::null(),
            pinning: ptr::null(),
        }
    }

    #[inline(always)]
    fn map(&self) -> *mut core::ffi::c_void {
        ptr::from_ref(self).cast_mut().cast()
    }

    /// The socket's value, if it has one.
    ///
    /// # Safety
    /// `sk` is the socket pointer of the program's context (non-null as the verifier requires).
    #[inline(always)]
    pub unsafe fn get(&self, sk: *mut bpf_sock) -> Option<*mut T> {
        // SAFETY: as the caller promises; no value and no flags: a pure lookup.
        let p = unsafe { bpf_sk_storage_get(self.map(), sk.cast(), ptr::null_mut(), 0) };
        (!p.is_null()).then_some(p.cast())
    }

    /// The socket's value, created zeroed if it has none. `None` when it could not be created
    /// (no memory, or the socket is being freed).
    ///
    /// # Safety
    /// As [`Self::get`].
    #[inline(always)]
    pub unsafe fn get_or_create(&self, sk: *mut bpf_sock) -> Option<*mut T> {
        // SAFETY: as the caller promises.
        let p = unsafe { bpf_sk_storage_get(self.map(), sk.cast(), ptr::null_mut(), F_CREATE) };
        (!p.is_null()).then_some(p.cast())
    }
}
