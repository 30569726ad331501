//! PyTorch's Kineto profiler (what `torch.profiler.profile` runs) around LibTorch work
//! (feature `tch`): which kernels a step launches, how long each runs, and where the device
//! waits for the host. The result is a Chrome trace (`chrome://tracing`, Perfetto), the same
//! format PyTorch's `export_chrome_trace` writes, so a step of ovkd and the reference's step
//! can be read side by side. tch 0.22 does not bind the profiler; `libtorch_shim.cpp` does.
//!
//! [`range`](crate::ops::profiler::range) names a stretch of host work (RPN proposals, RoIAlign's plan) in the trace, where
//! the GPU would otherwise show an unexplained idle gap; it costs nothing without the `tch`
//! feature and little when no profiler runs.

#[cfg(feature = "tch")]
use std::path::Path;

/// The profiler could not start or save.
#[derive(Debug, thiserror::Error)]
pub enum ProfilerError {
    /// LibTorch refused (already running, not running, or the trace could not be written).
    #[error("LibTorch profiler: {0}")]
    LibTorch(String),
    /// The trace path is not valid UTF-8 without NUL bytes (LibTorch takes a C string).
    #[error("profile path {0:?} cannot be passed to LibTorch")]
    Path(std::path::PathBuf),
}

#[cfg(feature = "tch")]
mod ffi {
    use std::os::raw::{c_char, c_int, c_void};

    unsafe extern "C" {
        pub fn ovkd_profiler_start(cuda: c_int, err: *mut c_char, err_len: usize) -> c_int;
        pub fn ovkd_profiler_stop(path: *const c_char, err: *mut c_char, err_len: usize) -> c_int;
        pub fn ovkd_range_start(name: *const c_char, len: usize) -> *mut c_void;
        pub fn ovkd_range_end(range: *mut c_void);
    }
}

/// A named range of host time in the profiler's trace, closed when dropped.
#[must_use = "the range closes when this is dropped"]
pub struct Range {
    #[cfg(feature = "tch")]
    handle: *mut std::os::raw::c_void,
}

/// Opens a range called `name` in the running profiler's trace (nothing when none runs).
pub fn range(name: &'static str) -> Range {
    #[cfg(feature = "tch")]
    {
        // SAFETY: `name` is static, so it outlives the range; the shim copies nothing else.
        let handle = unsafe { ffi::ovkd_range_start(name.as_ptr().cast(), name.len()) };
        Range { handle }
    }
    #[cfg(not(feature = "tch"))]
    {
        let _ = name;
        Range {}
    }
}

impl Drop for Range {
    fn drop(&mut self) {
        #[cfg(feature = "tch")]
        if !self.handle.is_null() {
            // SAFETY: a handle `ovkd_range_start` returned, closed once.
            unsafe { ffi::ovkd_range_end(self.handle) };
        }
    }
}

/// Starts recording host operators, and CUDA kernels and copies when `cuda`, on this thread.
#[cfg(feature = "tch")]
pub fn start(cuda: bool) -> Result<(), ProfilerError> {
    super::libtorch::try_shim(|err, len| {
        // SAFETY: the error buffer outlives the call.
        unsafe { ffi::ovkd_profiler_start(std::os::raw::c_int::from(cuda), err, len) }
    })
    .map_err(ProfilerError::LibTorch)
}

/// Stops recording and writes the Chrome trace to `path`.
#[cfg(feature = "tch")]
pub fn stop(path: &Path) -> Result<(), ProfilerError> {
    let c_path = path
        .to_str()
        .and_then(|s| std::ffi::CString::new(s).ok())
        .ok_or_else(|| ProfilerError::Path(path.to_path_buf()))?;
    super::libtorch::try_shim(|err, len| {
        // SAFETY: the path and the error buffer outlive the call.
        unsafe { ffi::ovkd_profiler_stop(c_path.as_ptr(), err, len) }
    })
    .map_err(ProfilerError::LibTorch)
}

#[cfg(all(test, feature = "tch"))]
mod tests {
    use super::*;

    /// A profiled LibTorch CPU matmul and a named range show up in the trace by their names.
    #[test]
    fn trace_names_the_operators_it_saw() {
        let dir = std::env::temp_dir().join(format!("ovkd-profiler-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("trace.json");
        start(false).unwrap();
        let a = tch::Tensor::ones([64, 64], (tch::Kind::Float, tch::Device::Cpu));
        let _ = a.matmul(&a);
        stop(&path).unwrap();
        let trace = std::fs::read_to_string(&path).unwrap();
        assert!(
            trace.contains("aten::matmul"),
            "no aten::matmul in the trace"
        );
        assert!(
            stop(&path).is_err(),
            "stopping a stopped profiler is an error"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
