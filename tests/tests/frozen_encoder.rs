//! The frozen encoder (one oneDNN network: BatchNorm folded into the convolutions, ReLU and the
//! residual add fused, activations in blocked layouts) gives the features of the candle module in
//! inference mode, on every stem, padding convention and width, f32 and bf16.

use byol_core::nn::precision::bf16_convolutions;
use byol_core::nn::{
    FrozenEncoder, Padding, Precision, ResNet, ResNetConfig, Role, Stem, VarStore,
};
use byol_kernels::{with_backend, Backend};
use byol_tests::eval_common::Rng;
use byol_tests::{onednn_loads, relative_error, uniform_tensor};
use candle_core::{Device, ModuleT, Tensor};

/// A ResNet whose BatchNorms have non-trivial scales, shifts and running statistics, so that
/// folding them is exercised (a fresh network has γ = 1, β = 0, mean 0, var 1).
fn randomised(config: &ResNetConfig, seed: u64) -> (VarStore, ResNet) {
    let mut vs = VarStore::new(&Device::Cpu, seed);
    let net = ResNet::new(&mut vs.root(), config).unwrap();
    let mut rng = Rng::new(seed);
    for e in vs.entries() {
        let draw: fn(&mut Rng) -> f64 = match e.role {
            Role::NormScale | Role::RunningVar => |r| 0.5 + r.uniform(),
            Role::NormShift | Role::RunningMean => |r| 0.1 * r.normal(),
            _ => continue,
        };
        let values: Vec<f32> = (0..e.var.elem_count())
            .map(|_| draw(&mut rng) as f32)
            .collect();
        e.var
            .set(&Tensor::from_vec(values, e.var.dims(), &Device::Cpu).unwrap())
            .unwrap();
    }
    (vs, net)
}

/// Relative error of `frozen`'s features of random images of `shape` against stock candle's
/// inference forward of `net`.
fn error_against_candle(
    net: &ResNet,
    frozen: &FrozenEncoder,
    shape: (usize, usize, usize, usize),
) -> f64 {
    let x = uniform_tensor(&[shape.0, shape.1, shape.2, shape.3], shape.0 as u64 + 5);
    let expected = with_backend(Backend::Stock, || net.forward_t(&x, false).unwrap());
    let pixels: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    let rows = frozen.forward(&pixels, shape).unwrap();
    let actual = Tensor::from_vec(rows, (shape.0, frozen.features()), &Device::Cpu).unwrap();
    relative_error(&actual, &expected)
}

/// The frozen oneDNN network of a randomised `config` in `precision`, and its error on `shape`.
fn frozen_error(
    config: &ResNetConfig,
    shape: (usize, usize, usize, usize),
    precision: Precision,
) -> f64 {
    let (_vs, net) = randomised(config, 3);
    let frozen = with_backend(Backend::OneDnn, || {
        FrozenEncoder::new(&net, precision, &Device::Cpu).unwrap()
    });
    assert!(frozen.on_onednn());
    error_against_candle(&net, &frozen, shape)
}

fn config(
    depth: usize,
    stem: Stem,
    in_channels: usize,
    base: usize,
    padding: Padding,
) -> ResNetConfig {
    ResNetConfig {
        stem,
        in_channels,
        base_channels: base,
        padding,
        ..ResNetConfig::new(depth)
    }
}

#[test]
fn frozen_network_matches_the_candle_module_in_f32() {
    if !onednn_loads() {
        return;
    }
    let cases = [
        // ResNet-50, ImageNet stem (max pool, downsample branches, bottlenecks), odd sizes.
        (
            config(50, Stem::Imagenet, 3, 16, Padding::Torch),
            (3, 3, 45, 37),
        ),
        // Official-checkpoint padding: TensorFlow SAME on even and odd sizes.
        (
            config(50, Stem::Imagenet, 3, 16, Padding::TfSame),
            (2, 3, 40, 33),
        ),
        // ResNet-18 small stem at CIFAR size, paper width (Winograd layers).
        (
            config(18, Stem::Small, 3, 64, Padding::Torch),
            (4, 3, 32, 32),
        ),
        // The quick start's narrow greyscale network (layers under 16 channels).
        (
            config(18, Stem::Small, 1, 8, Padding::Torch),
            (5, 1, 28, 28),
        ),
        (
            config(18, Stem::SmallStrided, 3, 16, Padding::Torch),
            (1, 3, 20, 20),
        ),
        (
            config(26, Stem::SmallPadded, 3, 16, Padding::Torch),
            (2, 3, 16, 16),
        ),
    ];
    for (config, shape) in cases {
        let err = frozen_error(&config, shape, Precision::F32);
        eprintln!("{shape:?} f32 relative error {err:e}");
        assert!(err < 1e-4, "{config:?} {shape:?}: relative error {err:e}");
    }
}

#[test]
fn frozen_network_in_bf16_stays_within_bf16_rounding() {
    if !onednn_loads() {
        return;
    }
    if !bf16_convolutions() {
        // AVX2-only CPUs: oneDNN has no bf16 convolutions, and bf16 is refused up front.
        let err = bf16_refusal(Backend::OneDnn);
        assert!(err.contains("AVX-512"), "{err}");
        return;
    }
    // bf16 keeps 8 bits of mantissa (~4e-3 per rounding); through a ResNet-50 the pooled
    // features drift further, but by far less than their scale.
    let err = frozen_error(
        &config(50, Stem::Imagenet, 3, 16, Padding::Torch),
        (2, 3, 48, 48),
        Precision::Bf16,
    );
    eprintln!("bf16 relative error {err:e}");
    assert!(err < 5e-2, "bf16 relative error {err:e}");
    assert!(
        err > 1e-5,
        "bf16 features equal to f32 ones ({err:e}): bf16 did not run"
    );
}

#[test]
fn frozen_network_plans_each_input_shape() {
    if !onednn_loads() {
        return;
    }
    let config = config(18, Stem::Small, 3, 16, Padding::Torch);
    let (_vs, net) = randomised(&config, 9);
    let frozen = with_backend(Backend::OneDnn, || {
        FrozenEncoder::new(&net, Precision::F32, &Device::Cpu).unwrap()
    });
    // Batch sizes and image sizes change between calls (the last batch of a split is smaller).
    for shape in [
        (4, 3, 16, 16),
        (1, 3, 16, 16),
        (4, 3, 16, 16),
        (2, 3, 24, 20),
    ] {
        let err = error_against_candle(&net, &frozen, shape);
        assert!(err < 1e-4, "{shape:?}: relative error {err:e}");
    }
    // A wrong input length is an error, not a read past the buffer.
    assert!(frozen.forward(&[0.0; 10], (1, 3, 16, 16)).is_err());
}

#[test]
fn bf16_without_onednn_is_refused_with_a_clear_error() {
    let err = bf16_refusal(Backend::Fast);
    assert!(err.contains("bf16"), "{err}");
    // f32 falls back to the candle module.
    let config = config(18, Stem::Small, 3, 8, Padding::Torch);
    let (_vs, net) = randomised(&config, 1);
    let frozen = with_backend(Backend::Fast, || {
        FrozenEncoder::new(&net, Precision::F32, &Device::Cpu).unwrap()
    });
    assert!(!frozen.on_onednn());
}

/// The error of a bf16 frozen encoder on `backend`, where it must be refused.
fn bf16_refusal(backend: Backend) -> String {
    let config = config(18, Stem::Small, 3, 8, Padding::Torch);
    let (_vs, net) = randomised(&config, 1);
    with_backend(backend, || {
        match FrozenEncoder::new(&net, Precision::Bf16, &Device::Cpu) {
            Ok(_) => panic!("bf16 ran on {backend:?}"),
            Err(e) => e.to_string(),
        }
    })
}
