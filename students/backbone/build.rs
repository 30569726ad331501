//! With the `tch` feature, compiles `src/ops/libtorch_shim.cpp` (the LibTorch operations tch
//! does not bind: the convolution backward and the fused AdamW step) against the LibTorch that
//! torch-sys links, with the same C++ settings torch-sys compiles its own bindings with.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=src/ops/libtorch_shim.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    if std::env::var_os("CARGO_FEATURE_TCH").is_none() {
        return;
    }
    // torch-sys (`links = "tch"`) reports the folder of the libraries it links.
    let lib = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB")
            .expect("torch-sys reports LibTorch's library folder (DEP_TCH_LIBTORCH_LIB)"),
    );
    let root = lib
        .parent()
        .expect("LibTorch's lib folder has a parent")
        .to_path_buf();
    let includes = [
        root.join("include"),
        root.join("include/torch/csrc/api/include"),
    ];
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .includes(&includes)
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={}", cxx11_abi()))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("src/ops/libtorch_shim.cpp")
        .compile("ovkd_libtorch_shim");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}

/// The C++ ABI LibTorch was built with, found as torch-sys finds it: `LIBTORCH_CXX11_ABI`, else
/// the pip-installed PyTorch's own answer (with `LIBTORCH_USE_PYTORCH`), else the new ABI.
fn cxx11_abi() -> &'static str {
    if let Ok(v) = std::env::var("LIBTORCH_CXX11_ABI") {
        return if v == "0" { "0" } else { "1" };
    }
    if std::env::var_os("LIBTORCH_USE_PYTORCH").is_some() {
        let python = std::env::var("PYTHON_SYS_EXECUTABLE").unwrap_or_else(|_| "python3".into());
        let out = Command::new(python)
            .args([
                "-c",
                "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))",
            ])
            .output();
        if let Ok(out) = out {
            if String::from_utf8_lossy(&out.stdout).trim() == "0" {
                return "0";
            }
        }
    }
    "1"
}
