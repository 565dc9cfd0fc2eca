//! Compiles the oneDNN shim (csrc/: convolutions for training, frozen networks for inference)
//! when Debian's `libdnnl-dev` (or a oneDNN 2.x or 3.x under `DNNL_ROOT`: `include/`, `lib/`) is
//! installed, and sets `cfg(byol_onednn)`; without its headers the crate builds the pure-Rust
//! kernels only. The shim opens the headers' library (libdnnl.so.2 or libdnnl.so.3, from
//! `DNNL_VERSION_MAJOR`) at run time (nothing is linked), so the binaries also run where oneDNN is
//! absent. `BYOL_ONEDNN=0` opts out; CUDA builds skip it (their convolutions run on the GPU).
use std::path::PathBuf;

/// The shim's translation units: the library loader, the training convolutions, frozen networks.
const SHIM: [&str; 3] = ["onednn_api.cpp", "onednn_conv.cpp", "onednn_frozen.cpp"];

fn main() {
    println!("cargo:rustc-check-cfg=cfg(byol_onednn)");
    for file in SHIM {
        println!("cargo:rerun-if-changed=csrc/{file}");
    }
    println!("cargo:rerun-if-changed=csrc/onednn_api.h");
    println!("cargo:rerun-if-env-changed=BYOL_ONEDNN");
    println!("cargo:rerun-if-env-changed=DNNL_ROOT");
    if std::env::var("BYOL_ONEDNN").is_ok_and(|v| v == "0")
        || std::env::var_os("CARGO_FEATURE_CUDA").is_some()
        || std::env::var("CARGO_CFG_TARGET_ARCH").is_ok_and(|a| a != "x86_64")
    {
        return;
    }
    let root = std::env::var_os("DNNL_ROOT").map(PathBuf::from);
    let include = match &root {
        Some(r) => r.join("include"),
        None => PathBuf::from("/usr/include"),
    };
    if !include.join("oneapi/dnnl/dnnl.hpp").is_file() {
        println!(
            "cargo:warning=oneDNN not found ({}): convolutions use the pure-Rust kernels; \
             install libdnnl-dev for the faster path",
            include.join("oneapi/dnnl/dnnl.hpp").display()
        );
        return;
    }
    println!(
        "cargo:rerun-if-changed={}",
        include.join("oneapi/dnnl/dnnl.hpp").display()
    );
    let version_h = include.join("oneapi/dnnl/dnnl_version.h");
    println!("cargo:rerun-if-changed={}", version_h.display());
    let major = match major_version(&version_h) {
        Some(m @ (2 | 3)) => m,
        other => {
            println!(
                "cargo:warning=oneDNN under {} is version {}; the shim knows the 2.x and 3.x C \
                 APIs only: convolutions use the pure-Rust kernels",
                include.display(),
                other.map_or("unknown".to_string(), |m| format!("{m}.x"))
            );
            return;
        }
    };
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .files(SHIM.iter().map(|f| format!("csrc/{f}")))
        .include(&include)
        .flag("-std=c++17")
        .opt_level(2)
        .warnings(true);
    build.compile("byol_onednn_conv");
    // The soname changed with the C API; a DNNL_ROOT's library is opened by its full path.
    let soname = format!("libdnnl.so.{major}");
    let library = match &root {
        Some(r) => r.join("lib").join(&soname).display().to_string(),
        None => soname,
    };
    println!("cargo:rustc-env=BYOL_DNNL_LIBRARY={library}");
    println!("cargo:rustc-env=BYOL_DNNL_MAJOR={major}");
    println!("cargo:rustc-link-lib=dylib=dl");
    println!("cargo:rustc-cfg=byol_onednn");
}

/// `DNNL_VERSION_MAJOR` of oneDNN's `dnnl_version.h`.
fn major_version(header: &std::path::Path) -> Option<u32> {
    let text = std::fs::read_to_string(header).ok()?;
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("#define"), Some("DNNL_VERSION_MAJOR"), Some(v)) => v.parse().ok(),
            _ => None,
        }
    })
}
