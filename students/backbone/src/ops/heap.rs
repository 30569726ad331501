//! Keeping freed tensor buffers in the process for reuse.
//!
//! burn-flex allocates a fresh buffer for nearly every op's output, and activations are
//! megabytes. glibc serves allocations above its mmap threshold (at most 32 MiB, adapted
//! upwards as large blocks are freed) with fresh `mmap`s and returns them to the kernel on
//! `free`, so every such buffer is zero-filled page by page again: in a profile of
//! `ovkd teacher embed` a quarter of the CPU time was page faults and `clear_page`. Raising the
//! mmap and trim thresholds keeps freed memory in the heap, where the next op of the same
//! shape takes it back. The cost is that the process holds on to its peak heap until it exits,
//! which suits a command-line tool that runs one job.

/// The largest allocation still served from the heap (bigger ones are mapped and unmapped):
/// glibc's ceiling for this setting on 64-bit targets.
pub const MMAP_THRESHOLD: usize = 32 << 20;

/// Free memory at the top of the heap kept rather than returned to the kernel.
pub const TRIM_THRESHOLD: usize = i32::MAX as usize;

/// Tells the allocator to keep freed buffers (glibc on Linux; elsewhere nothing to do).
/// Returns whether the settings were applied. Call once, at the start of `main`, before
/// threads allocate.
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; it is called before any worker
        // thread exists and with in-range values.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int) == 1
                && libc::mallopt(libc::M_TOP_PAD, (64usize << 20) as libc::c_int) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_accepts_the_settings() {
        // mallopt silently refuses out-of-range values (an mmap threshold above 32 MiB, for
        // one), which would leave the default policy in place.
        assert_eq!(
            retain_freed_memory(),
            cfg!(all(target_os = "linux", target_env = "gnu"))
        );
    }
}
