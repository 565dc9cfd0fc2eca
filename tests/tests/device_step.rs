//! Whole BYOL training steps on `BYOL_TEST_DEVICE` (`byol_tests::test_device`, CPU by default)
//! against the same steps on the CPU with candle's stock ops: every op of a step runs on the
//! device — convolutions and their two gradients, train-mode BatchNorm with its running
//! statistics, the ImageNet stem's max-pool (nine shifted views), projector and predictor, the
//! loss, backward, LARS and the EMA — from views made on the host and copied over once, as the
//! pretraining loop does. On the CPU the same test compares the fused kernels with the stock ops.
//! And the convolution off the CPU (`byol_kernels::device_conv2d`: candle's forward, our
//! backward) against candle's own gradients, on the test device (the same code runs on the CPU).

use byol_core::byol::Byol;
use byol_core::nn::Stem;
use byol_core::optim::{Lars, LarsConfig};
use byol_kernels::{with_backend, Backend};
use byol_tests::{
    abs_sum, device_tolerance, relative_error, test_device, tiny_byol_config, uniform_tensor, views,
};
use candle_core::{DType, Device, Tensor, Var};

/// Losses of `steps` steps and then every tensor of both networks and the LARS momentum, on the
/// host. ImageNet stem (7×7/2 convolution, 3×3/2 max-pool) on 32×32 views, batch 6.
fn train(device: &Device, steps: usize) -> (Vec<f64>, Vec<(String, Tensor)>) {
    let mut config = tiny_byol_config();
    config.encoder.stem = Stem::Imagenet;
    let mut model = Byol::new(&config, device, 0).unwrap();
    let mut lars = Lars::new(LarsConfig {
        weight_decay: 1e-4,
        ..LarsConfig::default()
    });
    let mut losses = Vec::new();
    for step in 0..steps {
        let (v1, v2) = views(6, 32, step as u64);
        let (v1, v2) = (v1.to_device(device).unwrap(), v2.to_device(device).unwrap());
        let out = model
            .train_step(&v1, &v2, &mut lars, 0.2, 0.99, &|_| 1.0)
            .unwrap();
        assert!(out.projection_std.is_finite());
        losses.push(out.loss);
    }
    let host = |prefix: &str, tensors: Vec<(String, Tensor)>| {
        tensors
            .into_iter()
            .map(|(n, t)| (format!("{prefix}{n}"), t.to_device(&Device::Cpu).unwrap()))
            .collect::<Vec<_>>()
    };
    let mut tensors = host("online.", model.online_store().tensors_under(""));
    tensors.extend(host(
        "target.",
        model.target_store().unwrap().tensors_under(""),
    ));
    let mut momentum: Vec<_> = lars
        .momentum_buffers()
        .iter()
        .map(|(n, t)| (format!("lars.{n}"), t.to_device(&Device::Cpu).unwrap()))
        .collect();
    momentum.sort_by(|a, b| a.0.cmp(&b.0));
    tensors.extend(momentum);
    (losses, tensors)
}

#[test]
fn a_byol_step_on_the_test_device_matches_the_cpu_stock_ops() {
    let device = test_device();
    let (reference_losses, reference) = with_backend(Backend::Stock, || train(&Device::Cpu, 1));
    let (losses, tensors) = train(device, 1);
    eprintln!("device {device:?}: loss {losses:?}, CPU stock {reference_losses:?}");
    let loss_error = (losses[0] - reference_losses[0]).abs() / reference_losses[0].abs();
    assert!(
        loss_error < device_tolerance(1e-5),
        "loss {losses:?} vs {reference_losses:?}"
    );
    assert_eq!(tensors.len(), reference.len());
    // One LARS step moves each parameter by lr × its (trust-scaled) gradient: zero-initialised
    // BatchNorm shifts become −lr·g, so their relative error is the gradient's (≤ 1e-4 between
    // the backends on CPU); 1e-3 leaves room and still catches any op that is wrong.
    let tolerance = device_tolerance(1e-3);
    let mut worst = (0f64, String::new());
    for ((name, t), (ref_name, r)) in tensors.iter().zip(&reference) {
        assert_eq!(name, ref_name);
        assert_eq!(t.dims(), r.dims(), "{name}");
        if t.dtype() == DType::I64 {
            // num_batches_tracked: two forward passes (one per view) in training mode.
            assert_eq!(t.to_scalar::<i64>().unwrap(), 2, "{name}");
            assert_eq!(r.to_scalar::<i64>().unwrap(), 2, "{name}");
            continue;
        }
        if name.starts_with("lars.") && name.ends_with(".0.bias") {
            // The first Linear's bias of each head sits in front of a BatchNorm: its exact
            // gradient, hence its momentum, is 0, and both sides hold rounding noise (~1e-7 of the
            // largest gradient; scripts/PERF.md). The bias itself is compared.
            continue;
        }
        let err = relative_error(t, r);
        assert!(err < tolerance, "{name}: relative error {err:.2e}");
        if err > worst.0 {
            worst = (err, name.clone());
        }
    }
    eprintln!(
        "worst relative error after one step: {:.2e} ({})",
        worst.0, worst.1
    );
}

#[test]
fn several_steps_on_the_test_device_stay_finite() {
    let (losses, tensors) = train(test_device(), 4);
    assert!(
        losses.iter().all(|l| l.is_finite() && *l > 0.0),
        "{losses:?}"
    );
    for (name, t) in &tensors {
        if t.dtype() == DType::I64 {
            assert_eq!(t.to_scalar::<i64>().unwrap(), 8, "{name}");
            continue;
        }
        assert!(abs_sum(t).is_finite(), "{name}");
    }
}

/// (y, dx, dw) of `sum(conv(x, w) · r)` on `device` (ours) or on the CPU (the reference), on the
/// host; dx is `None` when `x` is a plain tensor (the images).
fn conv_grads(
    (n, cin, h, w, cout, k, stride, pad): (usize, usize, usize, usize, usize, usize, usize, usize),
    device: &Device,
    ours: bool,
    x_is_var: bool,
) -> (Tensor, Option<Tensor>, Tensor) {
    let x = uniform_tensor(&[n, cin, h, w], 1)
        .to_device(device)
        .unwrap();
    let x = if x_is_var {
        Var::from_tensor(&x).unwrap().as_tensor().clone()
    } else {
        x
    };
    let wt = Var::from_tensor(
        &uniform_tensor(&[cout, cin, k, k], 2)
            .to_device(device)
            .unwrap(),
    )
    .unwrap();
    let y = if ours {
        byol_kernels::device_conv2d(&x, &wt, pad, stride).unwrap()
    } else {
        // The reference: the CPU kernels (tested against candle's own in kernels_ops.rs), which,
        // unlike candle's backward, also get maps whose rows and columns leave different
        // remainders under the stride right.
        with_backend(Backend::Fast, || {
            byol_kernels::conv2d(&x, &wt, pad, stride).unwrap()
        })
    };
    let r = uniform_tensor(y.dims(), 3).to_device(device).unwrap();
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let host = |t: &Tensor| t.to_device(&Device::Cpu).unwrap();
    (
        host(&y),
        grads.get(&x).map(host),
        host(grads.get(wt.as_tensor()).unwrap()),
    )
}

#[test]
fn the_device_convolution_matches_the_cpu_kernels_gradients() {
    let device = test_device();
    let cases = [
        (2, 3, 9, 7, 5, 3, 1, 1),   // odd sizes, 3×3
        (3, 4, 8, 8, 6, 3, 2, 1),   // stride 2
        (2, 4, 9, 7, 6, 3, 2, 1),   // stride 2, odd map: the last row and column skipped
        (2, 4, 8, 9, 6, 3, 2, 0),   // stride 2, no padding, one row but no column left over
        (2, 5, 6, 6, 7, 1, 1, 0),   // 1×1
        (2, 4, 9, 9, 8, 1, 2, 0),   // 1×1 stride 2 (downsample), odd map
        (1, 3, 15, 13, 4, 7, 2, 3), // 7×7 pad 3 (ImageNet stem)
        (2, 3, 16, 16, 8, 7, 2, 3), // 7×7 pad 3, even map
        (5, 2, 3, 3, 3, 3, 1, 0),   // 1×1 output map
        (2, 2, 1, 1, 3, 3, 1, 1),   // same-size 3×3 on a 1×1 map
        (2, 3, 6, 5, 4, 5, 1, 2),   // 5×5, pad 2
        (4, 16, 8, 8, 32, 3, 1, 1), // wider
    ];
    let tolerance = device_tolerance(1e-5);
    for case in cases {
        let (y0, dx0, dw0) = conv_grads(case, &Device::Cpu, false, true);
        assert!(dx0.is_some(), "{case:?}");
        let (y1, dx1, dw1) = conv_grads(case, device, true, true);
        let errs = [
            relative_error(&y1, &y0),
            relative_error(&dx1.unwrap(), &dx0.unwrap()),
            relative_error(&dw1, &dw0),
        ];
        eprintln!(
            "{case:?}: y {:.1e} dx {:.1e} dw {:.1e}",
            errs[0], errs[1], errs[2]
        );
        for (what, e) in ["output", "input grad", "weight grad"].iter().zip(errs) {
            assert!(e < tolerance, "{case:?} {what}: {e}");
        }
    }
    // The images of the first layer get no gradient, the weights theirs.
    let stem = (2, 3, 16, 16, 8, 7, 2, 3);
    let (_, dx, dw) = conv_grads(stem, device, true, false);
    assert!(dx.is_none());
    let (_, _, dw0) = conv_grads(stem, &Device::Cpu, false, false);
    assert!(relative_error(&dw, &dw0) < tolerance);
}
