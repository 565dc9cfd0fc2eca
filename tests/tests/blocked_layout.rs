//! Activations in oneDNN's channel-blocked layout (`[N, C/B, H, W, B]`) against plain NCHW: the
//! convolution's three passes (oneDNN and the Rust kernels), the fused BatchNorms (every
//! epilogue, alone and synchronised) and whole BYOL gradients with the stages kept blocked.

use std::sync::Arc;

use byol_core::byol::Byol;
use byol_core::nn::{BatchNorm, VarStore};
use byol_kernels::{self as kernels, with_backend, with_blocked_activations, Backend, ChannelSum};
use byol_tests::{
    conv_backends, onednn_loads, online_gradients, relative_error, tiny_byol_config,
    uniform_tensor, views, worst_gradient_error,
};
use candle_core::{Device, ModuleT, Tensor, Var};

/// The blocked path runs the same arithmetic as the plain one (oneDNN reorders plain tensors
/// into this layout itself; the Rust kernels rearrange blocked ones to plain), so they agree to
/// rounding of the summation order at most.
const TOL: f64 = 1e-6;

/// (y, dx, dw) of `sum(conv(x, w) · r)`, the convolution fed a blocked `x` when `block` > 0
/// (and its output converted back), under `backend`.
fn conv_case(
    (n, cin, h, w, cout, k, stride, pad): (usize, usize, usize, usize, usize, usize, usize, usize),
    block: usize,
    backend: Backend,
) -> Vec<Tensor> {
    with_backend(backend, || {
        let x = Var::from_tensor(&uniform_tensor(&[n, cin, h, w], 1)).unwrap();
        let wt = Var::from_tensor(&uniform_tensor(&[cout, cin, k, k], 2)).unwrap();
        let y = if block == 0 {
            kernels::conv2d(&x, &wt, pad, stride).unwrap()
        } else {
            let xb = kernels::to_blocked(&x, block).unwrap();
            let yb = kernels::conv2d(&xb, &wt, pad, stride).unwrap();
            assert_eq!(yb.rank(), 5, "a blocked input gives a blocked output");
            kernels::from_blocked(&yb).unwrap()
        };
        let r = uniform_tensor(y.dims(), 3);
        let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        vec![
            y,
            grads.get(x.as_tensor()).unwrap().clone(),
            grads.get(wt.as_tensor()).unwrap().clone(),
        ]
    })
}

#[test]
fn blocked_convolutions_match_plain_ones() {
    let cases = [
        (2, 16, 9, 7, 32, 3, 1, 1),  // odd sizes, 3×3
        (3, 32, 8, 8, 16, 3, 2, 1),  // stride 2
        (2, 16, 6, 6, 48, 1, 1, 0),  // 1×1
        (2, 32, 9, 9, 16, 1, 2, 0),  // 1×1 stride 2 (downsample)
        (2, 16, 8, 8, 16, 3, 1, 1),  // Winograd where oneDNN has it
        (40, 16, 4, 4, 32, 3, 1, 1), // small maps, many samples
    ];
    for backend in conv_backends() {
        for case in cases {
            let plain = conv_case(case, 0, backend);
            for block in [8, 16] {
                let blocked = conv_case(case, block, backend);
                for (name, (a, b)) in ["y", "dx", "dw"].iter().zip(blocked.iter().zip(&plain)) {
                    let e = relative_error(a, b);
                    assert!(e < TOL, "{backend:?} {case:?} block {block} {name}: {e}");
                }
            }
        }
    }
}

#[test]
fn blocked_convolutions_refuse_partial_blocks() {
    let x = kernels::to_blocked(&uniform_tensor(&[2, 16, 5, 5], 1), 8).unwrap();
    // 12 output channels are not whole blocks of 8: an error, not a panic.
    let err = kernels::conv2d(&x, &uniform_tensor(&[12, 16, 3, 3], 2), 1, 1).unwrap_err();
    assert!(err.to_string().contains("whole blocks"), "{err}");
    assert!(kernels::to_blocked(&uniform_tensor(&[2, 12, 5, 5], 1), 8).is_err());
}

/// Two identical processes: every sum doubles, so synchronised statistics and gradients equal
/// one process's own.
struct TwinReplicas;

impl ChannelSum for TwinReplicas {
    fn sum(&self, values: &mut [f64]) -> candle_core::Result<()> {
        values.iter_mut().for_each(|v| *v *= 2.0);
        Ok(())
    }
}

/// (y, dx, dγ, dβ, running mean, running var[, dr]) of a train-mode BatchNorm (`epilogue` 0:
/// plain, 1: ReLU, 2: residual add + ReLU), fed blocked tensors when `block` > 0.
fn bn_case(shape: [usize; 4], epilogue: u8, block: usize, synced: bool) -> Vec<Tensor> {
    let c = shape[1];
    let mut store = VarStore::new(&Device::Cpu, 0);
    let bn = BatchNorm::new(&mut store.root().pp("bn"), c, false).unwrap();
    let var = |name: &str| store.get(name).unwrap().var.clone();
    var("bn.weight").set(&uniform_tensor(&[c], 4)).unwrap();
    var("bn.bias").set(&uniform_tensor(&[c], 5)).unwrap();
    let x = Var::from_tensor(&uniform_tensor(&shape, 6).affine(3.0, 0.5).unwrap()).unwrap();
    let r = Var::from_tensor(&uniform_tensor(&shape, 8)).unwrap();
    let lay = |t: &Tensor| match block {
        0 => t.clone(),
        b => kernels::to_blocked(t, b).unwrap(),
    };
    let sync: Option<Arc<dyn ChannelSum>> = synced.then(|| Arc::new(TwinReplicas) as _);
    let y = with_backend(Backend::Fast, || {
        kernels::with_channel_sum(sync, || {
            let (xs, rs) = (lay(&x), lay(&r));
            let y = match epilogue {
                0 => bn.forward_t(&xs, true),
                1 => bn.forward_relu(&xs, true),
                _ => bn.forward_add_relu(&xs, &rs, true),
            }
            .unwrap();
            assert_eq!(y.dims(), xs.dims());
            kernels::from_blocked(&y).unwrap()
        })
    });
    let w = uniform_tensor(y.dims(), 7);
    let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let g = |t: &Tensor| grads.get(t).unwrap().clone();
    let mut out = vec![
        y.clone(),
        g(x.as_tensor()),
        g(var("bn.weight").as_tensor()),
        g(var("bn.bias").as_tensor()),
        var("bn.running_mean").as_tensor().clone(),
        var("bn.running_var").as_tensor().clone(),
    ];
    if epilogue == 2 {
        out.push(g(r.as_tensor()));
    }
    out
}

#[test]
fn blocked_batch_norms_match_plain_ones() {
    let names = [
        "y",
        "dx",
        "dgamma",
        "dbeta",
        "running_mean",
        "running_var",
        "dresidual",
    ];
    for shape in [[4, 16, 5, 7], [3, 32, 1, 1], [16, 16, 4, 4], [2, 48, 9, 9]] {
        for epilogue in 0..3 {
            for synced in [false, true] {
                let plain = bn_case(shape, epilogue, 0, synced);
                for block in [8, 16] {
                    let blocked = bn_case(shape, epilogue, block, synced);
                    for ((name, a), b) in names.iter().zip(&blocked).zip(&plain) {
                        let e = relative_error(a, b);
                        assert!(
                            e < 1e-5,
                            "{shape:?} epilogue {epilogue} block {block} synced {synced} {name}: {e}"
                        );
                    }
                }
            }
        }
    }
}

/// The gradient of the BYOL loss for every online tensor of a ResNet-18 at 16 base channels
/// (every stage width a whole number of 8- and 16-channel blocks) under `backend`, with blocked
/// training activations allowed or not.
fn gradients(backend: Backend, blocked: bool) -> Vec<(String, Tensor)> {
    let mut config = tiny_byol_config();
    config.encoder.base_channels = 16;
    with_backend(backend, || {
        with_blocked_activations(blocked, || {
            let model = Byol::new(&config, &Device::Cpu, 3).unwrap();
            let (v1, v2) = views(16, 16, 0);
            online_gradients(&model, &v1, &v2)
        })
    })
}

#[test]
fn byol_gradients_are_the_same_with_blocked_training_activations() {
    if !onednn_loads() {
        return;
    }
    let probe = uniform_tensor(&[2, 16, 4, 4], 1);
    for backend in [Backend::OneDnn, Backend::OneDnnDirect] {
        let engaged = with_backend(backend, || {
            kernels::training_block(&probe, &[16, 32, 64, 128]).is_some()
        });
        eprintln!("{backend:?}: blocked training activations engaged: {engaged}");
        // Wherever oneDNN's kernels pick a blocked layout (AVX2, AVX-512), it engages.
        assert_eq!(engaged, kernels::onednn::activation_block().is_some());
        let plain = gradients(backend, false);
        let blocked = gradients(backend, true);
        assert!(plain.len() > 40, "the whole network: {}", plain.len());
        assert_eq!(plain.len(), blocked.len());
        let worst = worst_gradient_error(&blocked, &plain);
        eprintln!("{backend:?} blocked vs plain, worst gradient: {worst:?}");
        // The BatchNorm sums add in another order (measured 1.0e-5 here, the projector's BN
        // bias; fp32's own sensitivity is ~2e-5, kernels_ops.rs): the backends' bound.
        assert!(worst.0 < 1e-4, "{worst:?}");
    }
    // Never on the bf16 backend (its convolutions convert at every call anyway) or the Rust one.
    for backend in [Backend::Fast, Backend::OneDnnBf16, Backend::Stock] {
        let engaged = with_backend(backend, || {
            kernels::training_block(&probe, &[16, 32, 64, 128]).is_some()
        });
        assert!(!engaged, "{backend:?}");
    }
    // Nor with a narrow or partial-block layer, nor when switched off.
    with_backend(Backend::OneDnn, || {
        assert!(kernels::training_block(&probe, &[8, 16]).is_none());
        assert!(kernels::training_block(&probe, &[16, 20]).is_none());
        with_blocked_activations(false, || {
            assert!(kernels::training_block(&probe, &[16, 32]).is_none());
        });
    });
}
