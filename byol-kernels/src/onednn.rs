//! Convolutions through oneDNN (`csrc/onednn_conv.cpp`, compiled by build.rs when libdnnl-dev, or a
//! oneDNN 2.x or 3.x under `DNNL_ROOT`, is installed): the same three passes as `conv.rs`, on
//! oneDNN's JIT direct and Winograd kernels.
//! The library is opened on first use; without it (at build or at run time), or with
//! `BYOL_ONEDNN=0` in the environment, [`available`] is false and the Rust kernels run.

use crate::geometry::Conv2dGeometry;

/// Which convolution pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// `(x, w) → y`
    Forward = 0,
    /// `(dy, w) → dx`
    InputGrad = 1,
    /// `(x, dy) → dw`
    WeightGrad = 2,
}

/// Whether oneDNN is usable: built in, not switched off by `BYOL_ONEDNN=0`, and its library
/// loaded (the first call loads it; `BYOL_DNNL_LIBRARY` names another file than the build's).
pub fn available() -> bool {
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOADED.get_or_init(|| {
        if !cfg!(byol_onednn) || std::env::var("BYOL_ONEDNN").is_ok_and(|v| v == "0") {
            return false;
        }
        match load() {
            Ok(()) => true,
            Err(e) => {
                tracing::info!("oneDNN not used ({e}); convolutions run on the Rust kernels");
                false
            }
        }
    })
}

/// The oneDNN library this process opens: `BYOL_DNNL_LIBRARY`, else the build's (libdnnl.so.2 or
/// libdnnl.so.3, as its headers were; a full path under `DNNL_ROOT`). None without the shim.
pub fn library() -> Option<String> {
    #[cfg(byol_onednn)]
    return Some(
        std::env::var("BYOL_DNNL_LIBRARY")
            .unwrap_or_else(|_| env!("BYOL_DNNL_LIBRARY").to_string()),
    );
    #[cfg(not(byol_onednn))]
    None
}

/// The major version of the oneDNN C API this build speaks (2 or 3; the library loaded is
/// checked against it). None without the shim.
pub fn major_version() -> Option<u32> {
    #[cfg(byol_onednn)]
    return env!("BYOL_DNNL_MAJOR").parse().ok();
    #[cfg(not(byol_onednn))]
    None
}

/// Whether bf16 weight gradients pay on this oneDNN: 2.x's bf16 weight-gradient kernel
/// (`jit:avx512_core_amx_bf16`) took 2.3× the time of its f32 kernels over a ResNet-50 step and
/// was slower on every one of its 22 shapes, and on the quick start's network
/// (scripts/PERF.md, session 16); 3.x has AMX brgemm kernels for it.
pub(crate) fn bf16_weight_grads_pay() -> bool {
    major_version().is_some_and(|m| m >= 3)
}

/// Opens the library. libgomp (oneDNN's threads) reads its wait policy once, when it is loaded,
/// and by default spins for milliseconds after every parallel region; between two convolutions
/// those spinning threads take the cores from the rayon threads of the BatchNorm and elementwise
/// kernels (measured: 17 % of a step's CPU samples in libgomp's spin loop, and +17 % img/s with
/// `GOMP_SPINCOUNT=0`), so that becomes the default unless the user chose a policy.
#[cfg(byol_onednn)]
fn load() -> Result<(), String> {
    if std::env::var_os("GOMP_SPINCOUNT").is_none() && std::env::var_os("OMP_WAIT_POLICY").is_none()
    {
        // std's environment lock guards this against concurrent std::env readers.
        std::env::set_var("GOMP_SPINCOUNT", "0");
    }
    let path = library().expect("a build with the shim names its library");
    let c_path = std::ffi::CString::new(path.clone()).map_err(|e| e.to_string())?;
    // SAFETY: the path is a valid C string for the call.
    call_shim(|err, len| unsafe { ffi::byol_onednn_load(c_path.as_ptr(), err, len) })
        .map_err(|msg| format!("{path}: {msg}"))
}

/// Calls a shim function with a message buffer (`err`, its length); its message on failure
/// (the C side writes a NUL-terminated one, snprintf, whenever it returns non-zero).
pub(crate) fn call_shim(f: impl FnOnce(*mut std::ffi::c_char, usize) -> i32) -> Result<(), String> {
    let mut err = [0 as std::ffi::c_char; 512];
    if f(err.as_mut_ptr(), err.len()) == 0 {
        return Ok(());
    }
    // SAFETY: the buffer is NUL-terminated (zeroed, and the C side writes with snprintf).
    let msg = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) };
    Err(msg.to_string_lossy().into_owned())
}

#[cfg(not(byol_onednn))]
fn load() -> Result<(), String> {
    Err("this build has no oneDNN (install libdnnl-dev and rebuild)".into())
}

#[cfg(byol_onednn)]
mod ffi {
    extern "C" {
        pub fn byol_onednn_load(
            path: *const std::ffi::c_char,
            err: *mut std::ffi::c_char,
            err_len: usize,
        ) -> i32;
        pub fn byol_onednn_conv(
            kind: i32,
            geometry: *const i64,
            winograd: i32,
            bf16: i32,
            block: i32,
            a: *const f32,
            b: *const f32,
            out: *mut f32,
            threads: i32,
            err: *mut std::ffi::c_char,
            err_len: usize,
        ) -> i32;
        pub fn byol_onednn_activation_block(
            block: *mut i32,
            err: *mut std::ffi::c_char,
            err_len: usize,
        ) -> i32;
    }
}

/// The channel block of the activation layout oneDNN's f32 convolutions pick on this CPU
/// (nChw16c with AVX-512, nChw8c with AVX2), asked of the library once; None without oneDNN or
/// where it picks another layout.
pub fn activation_block() -> Option<usize> {
    static BLOCK: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *BLOCK.get_or_init(|| {
        if !available() {
            return None;
        }
        query_activation_block()
            .inspect_err(|e| tracing::info!("oneDNN's activation layout unknown ({e})"))
            .ok()
            .filter(|&b| b > 0)
    })
}

#[cfg(byol_onednn)]
fn query_activation_block() -> Result<usize, String> {
    let mut block = 0i32;
    // SAFETY: the shim writes one i32 through the pointer.
    call_shim(|err, len| unsafe { ffi::byol_onednn_activation_block(&mut block, err, len) })?;
    Ok(usize::try_from(block).unwrap_or(0))
}

#[cfg(not(byol_onednn))]
fn query_activation_block() -> Result<usize, String> {
    Err("this build has no oneDNN".into())
}

/// Runs one pass; `a`/`b` are the pass's inputs (see [`Pass`]), f32, weights in OIHW order and
/// activations (the output's too) plain NCHW (`block` 0) or channel-blocked (8 or 16); with `bf16` oneDNN rounds them to
/// bfloat16 and computes in bf16 with f32 accumulation and output. Errors carry oneDNN's
/// message.
#[cfg(byol_onednn)]
pub(crate) fn run(
    pass: Pass,
    g: &Conv2dGeometry,
    (winograd, bf16): (bool, bool),
    block: usize,
    a: &[f32],
    b: &[f32],
) -> Result<Vec<f32>, String> {
    let (x_len, w_len, y_len) = (
        g.n * g.cin * g.h * g.w,
        g.cout * g.cin * g.kh * g.kw,
        g.n * g.cout * g.ho * g.wo,
    );
    let (a_len, b_len, o_len) = match pass {
        Pass::Forward => (x_len, w_len, y_len),
        Pass::InputGrad => (y_len, w_len, x_len),
        Pass::WeightGrad => (x_len, y_len, w_len),
    };
    // The C side trusts these extents (a blocked layout has the same size: whole blocks).
    if block > 0 && !(g.cin.is_multiple_of(block) && g.cout.is_multiple_of(block)) {
        return Err(format!(
            "oneDNN {pass:?}: channels {} → {} are not whole blocks of {block}",
            g.cin, g.cout
        ));
    }
    if a.len() != a_len || b.len() != b_len {
        return Err(format!(
            "oneDNN {pass:?}: input sizes {} {} do not match {g:?}",
            a.len(),
            b.len()
        ));
    }
    let out_len = o_len;
    let geometry = [g.n, g.cin, g.h, g.w, g.cout, g.kh, g.kw, g.stride, g.pad].map(|v| v as i64);
    let mut out = Vec::<f32>::with_capacity(out_len);
    let threads = i32::try_from(rayon::current_num_threads()).unwrap_or(0);
    // SAFETY: the extents were checked above against the geometry the C side reads them with;
    // `out` has capacity for `out_len` floats and the C side writes all of them on success.
    call_shim(|err, len| unsafe {
        ffi::byol_onednn_conv(
            pass as i32,
            geometry.as_ptr(),
            i32::from(winograd),
            i32::from(bf16),
            i32::try_from(block).unwrap_or(-1),
            a.as_ptr(),
            b.as_ptr(),
            out.as_mut_ptr(),
            threads,
            err,
            len,
        )
    })
    .map_err(|msg| format!("oneDNN {pass:?} {g:?}: {msg}"))?;
    // SAFETY: a successful call wrote every element.
    unsafe { out.set_len(out_len) };
    Ok(out)
}

#[cfg(not(byol_onednn))]
pub(crate) fn run(
    pass: Pass,
    _g: &Conv2dGeometry,
    _precision: (bool, bool),
    _block: usize,
    _a: &[f32],
    _b: &[f32],
) -> Result<Vec<f32>, String> {
    Err(format!(
        "oneDNN {pass:?}: this build has no oneDNN (install libdnnl-dev and rebuild)"
    ))
}
