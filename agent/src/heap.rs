//! Gives the heap's free pages back to the kernel after the agent's start-up peaks.
//!
//! glibc's malloc returns memory to the system only from the top of its heap, and only past a
//! threshold; what start-up frees below a live allocation (the kernel's parsed BTF while the
//! programs load, the first full compile's intermediate state) stays resident for the agent's
//! whole life. `malloc_trim(0)` releases every free page, wherever it is.

/// Releases the free heap pages; returns whether glibc released any. A no-op (false) on other C
/// libraries, whose allocators have their own policies.
pub fn release_free() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks and trims the allocator's own free lists.
        unsafe { libc::malloc_trim(0) != 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn freed_pages_go_back() {
        // A large block's worth of small allocations, freed below one that stays alive: the
        // case the top-of-heap trim cannot reach.
        let blocks: Vec<Vec<u8>> = (0..4096).map(|_| vec![1u8; 1024]).collect();
        let keep = Box::new([2u8; 64]); // on the heap, above the freed blocks
        drop(blocks);
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        assert!(super::release_free());
        assert_eq!(keep[0], 2);
    }
}
