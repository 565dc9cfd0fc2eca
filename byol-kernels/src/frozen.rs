//! Frozen networks for inference on oneDNN (`csrc/onednn_frozen.cpp`): a ResNet whose BatchNorms
//! the caller folded into its convolutions, run as one chain of oneDNN primitives with the
//! activations in oneDNN's blocked layouts throughout, ReLU and the residual add as post-ops of
//! the convolutions. The network is a list of [`FrozenOp`]s over numbered registers (activation
//! buffers); register 0 is the input image batch.

/// One convolution with its folded BatchNorm: `dst = relu?(conv(src, weight) + bias (+ dst))`.
#[derive(Debug, Clone)]
pub struct FrozenConv {
    pub src: usize,
    pub dst: usize,
    /// `[cout, cin, kernel, kernel]`, row-major.
    pub weight: Vec<f32>,
    /// `[cout]`.
    pub bias: Vec<f32>,
    pub cin: usize,
    pub cout: usize,
    pub kernel: usize,
    pub stride: usize,
    /// Symmetric padding (ignored with `tf_same`).
    pub pad: usize,
    /// TensorFlow `SAME` padding, computed from each input size.
    pub tf_same: bool,
    pub relu: bool,
    /// Adds the destination's current content (the residual shortcut) before the ReLU.
    pub sum: bool,
}

#[derive(Debug, Clone)]
pub enum FrozenOp {
    Conv(FrozenConv),
    /// 3×3 stride-2 max pool with ⌈n/2⌉ outputs (PyTorch padding 1, or TensorFlow `SAME`).
    MaxPool3x3s2 {
        src: usize,
        dst: usize,
        tf_same: bool,
    },
    /// Mean over the spatial positions: the network's output, `[n, channels]`.
    GlobalAvgPool {
        src: usize,
    },
}

/// Numbers per op record, in the order `onednn_frozen.cpp`'s `Field` reads them.
const RECORD_LEN: usize = 11;

/// A frozen network built in oneDNN; plans per input shape are built on first use and kept.
pub struct FrozenNet {
    handle: *mut std::ffi::c_void,
    features: usize,
}

// SAFETY: the C side serialises forwards on a mutex of its own and never hands out interior
// pointers; the handle is freed once, in Drop.
unsafe impl Send for FrozenNet {}
// SAFETY: as above.
unsafe impl Sync for FrozenNet {}

impl FrozenNet {
    /// Builds `ops` in oneDNN, activations and weights in bf16 when `bf16` (bias, pooled
    /// features, input f32). Fails when oneDNN is not [`crate::onednn::available`] or the ops
    /// do not form a network ending in a global pool.
    pub fn new(ops: &[FrozenOp], bf16: bool) -> Result<Self, String> {
        if !crate::onednn::available() {
            return Err("oneDNN is not available".into());
        }
        let features = output_channels(ops)?;
        let mut records = Vec::with_capacity(ops.len() * RECORD_LEN);
        let mut weights = Vec::new();
        let mut biases = Vec::new();
        for op in ops {
            let record: [usize; RECORD_LEN] = match op {
                FrozenOp::Conv(c) => {
                    if c.weight.len() != c.cout * c.cin * c.kernel * c.kernel
                        || c.bias.len() != c.cout
                        || c.kernel == 0
                        || c.stride == 0
                    {
                        return Err(format!(
                            "a frozen convolution's tensors do not fit [{}, {}, {k}, {k}]",
                            c.cout,
                            c.cin,
                            k = c.kernel
                        ));
                    }
                    weights.push(c.weight.as_ptr());
                    biases.push(c.bias.as_ptr());
                    [
                        0,
                        c.src,
                        c.dst,
                        c.cin,
                        c.cout,
                        c.kernel,
                        c.stride,
                        c.pad,
                        c.tf_same.into(),
                        c.relu.into(),
                        c.sum.into(),
                    ]
                }
                &FrozenOp::MaxPool3x3s2 { src, dst, tf_same } => {
                    [1, src, dst, 0, 0, 3, 2, 1, tf_same.into(), 0, 0]
                }
                &FrozenOp::GlobalAvgPool { src } => [2, src, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            };
            records.extend(record.map(|v| v as i64));
        }
        let mut handle = std::ptr::null_mut();
        call(|err, len| {
            // SAFETY: `records` holds ops.len() records of RECORD_LEN; `weights`/`biases` point
            // at one buffer per convolution, in op order, of the extents checked above (the C
            // side copies them before returning).
            unsafe {
                ffi::byol_onednn_frozen_create(
                    records.as_ptr(),
                    ops.len(),
                    weights.as_ptr(),
                    biases.as_ptr(),
                    i32::from(bf16),
                    &mut handle,
                    err,
                    len,
                )
            }
        })?;
        Ok(Self { handle, features })
    }

    /// Width of the output rows.
    pub fn features(&self) -> usize {
        self.features
    }

    /// Runs the network on `x` (`[n, c, h, w]` f32, row-major) with oneDNN's OpenMP threads set
    /// to rayon's count; returns `[n, features]` row-major.
    pub fn forward(
        &self,
        x: &[f32],
        shape: (usize, usize, usize, usize),
    ) -> Result<Vec<f32>, String> {
        let (n, c, h, w) = shape;
        if x.len() != n * c * h * w {
            return Err(format!("input of {} floats is not {shape:?}", x.len()));
        }
        let out_len = n * self.features;
        let mut out = Vec::<f32>::with_capacity(out_len);
        let threads = i32::try_from(rayon::current_num_threads()).unwrap_or(0);
        call(|err, len| {
            // SAFETY: `x` holds n·c·h·w floats (checked); `out` has capacity for out_len floats,
            // which the C side checks against the plan's output before writing all of them.
            unsafe {
                ffi::byol_onednn_frozen_forward(
                    self.handle,
                    x.as_ptr(),
                    n as i64,
                    c as i64,
                    h as i64,
                    w as i64,
                    out.as_mut_ptr(),
                    out_len,
                    threads,
                    err,
                    len,
                )
            }
        })?;
        // SAFETY: a successful call wrote every element.
        unsafe { out.set_len(out_len) };
        Ok(out)
    }
}

impl Drop for FrozenNet {
    fn drop(&mut self) {
        // SAFETY: the handle came from byol_onednn_frozen_create and is freed only here.
        unsafe { ffi::byol_onednn_frozen_destroy(self.handle) }
    }
}

/// The channels of the global pool's input, following the registers from the ops.
fn output_channels(ops: &[FrozenOp]) -> Result<usize, String> {
    let mut channels = std::collections::HashMap::new();
    for op in ops {
        match op {
            FrozenOp::Conv(c) => {
                channels.insert(c.dst, c.cout);
            }
            FrozenOp::MaxPool3x3s2 { src, dst, .. } => {
                let c = *channels
                    .get(src)
                    .ok_or("a pool reads a register nothing wrote")?;
                channels.insert(*dst, c);
            }
            FrozenOp::GlobalAvgPool { src } => {
                return channels
                    .get(src)
                    .copied()
                    .ok_or_else(|| "the global pool reads a register nothing wrote".into())
            }
        }
    }
    Err("a frozen network must end in a global pool".into())
}

/// Calls the C side; its message, prefixed, on failure.
fn call(f: impl FnOnce(*mut std::ffi::c_char, usize) -> i32) -> Result<(), String> {
    crate::onednn::call_shim(f).map_err(|msg| format!("oneDNN frozen network: {msg}"))
}

#[cfg(byol_onednn)]
mod ffi {
    use std::ffi::{c_char, c_void};
    extern "C" {
        pub fn byol_onednn_frozen_create(
            records: *const i64,
            n_ops: usize,
            weights: *const *const f32,
            biases: *const *const f32,
            bf16: i32,
            out: *mut *mut c_void,
            err: *mut c_char,
            err_len: usize,
        ) -> i32;
        #[allow(clippy::too_many_arguments)]
        pub fn byol_onednn_frozen_forward(
            handle: *mut c_void,
            x: *const f32,
            n: i64,
            c: i64,
            h: i64,
            w: i64,
            out: *mut f32,
            out_len: usize,
            threads: i32,
            err: *mut c_char,
            err_len: usize,
        ) -> i32;
        pub fn byol_onednn_frozen_destroy(handle: *mut c_void);
    }
}

/// Without the shim no network is ever built (`FrozenNet::new` fails first).
#[cfg(not(byol_onednn))]
mod ffi {
    use std::ffi::{c_char, c_void};
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn byol_onednn_frozen_create(
        _: *const i64,
        _: usize,
        _: *const *const f32,
        _: *const *const f32,
        _: i32,
        _: *mut *mut c_void,
        _: *mut c_char,
        _: usize,
    ) -> i32 {
        unreachable!("no oneDNN in this build")
    }
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn byol_onednn_frozen_forward(
        _: *mut c_void,
        _: *const f32,
        _: i64,
        _: i64,
        _: i64,
        _: i64,
        _: *mut f32,
        _: usize,
        _: i32,
        _: *mut c_char,
        _: usize,
    ) -> i32 {
        unreachable!("no oneDNN in this build")
    }
    pub unsafe fn byol_onednn_frozen_destroy(_: *mut c_void) {}
}
