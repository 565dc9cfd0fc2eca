//! The recipe's exact formulas against values computed by hand: τ schedule, learning-rate
//! schedule, the paper's presets, one LARS step, the loss and the EMA update.
//!
//! The tensor tests run on `BYOL_TEST_DEVICE` (`byol_tests::test_device`, CPU by default): on CPU
//! LARS and the EMA take the fused kernels, on a GPU candle's ops.

use byol_core::byol::{ema_update, regression_loss, symmetric_loss, tau_at, tau_schedule};
use byol_core::nn::{Role, VarStore};
use byol_core::optim::{Lars, LarsConfig, LrSchedule, Preset};
use byol_tests::test_device;
use candle_core::Tensor;

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * b.abs().max(1.0)
}

#[test]
fn tau_follows_the_cosine_schedule() {
    // τ_k = 1 − (1 − τ_base)(cos(πk/K) + 1)/2.
    assert!(close(tau_schedule(0.996, 0, 1000), 0.996, 1e-12));
    assert!(close(tau_schedule(0.996, 1000, 1000), 1.0, 1e-12));
    assert!(close(tau_schedule(0.996, 500, 1000), 0.998, 1e-12));
    // k = K/3: cos(π/3) = 0.5 → τ = 1 − 0.01·0.75.
    assert!(close(
        tau_schedule(0.99, 100, 300),
        1.0 - 0.01 * 0.75,
        1e-12
    ));
    // The ablation endpoints stay what they are.
    assert_eq!(tau_schedule(1.0, 10, 100), 1.0);
    assert!(close(tau_schedule(0.0, 0, 100), 0.0, 1e-12));
}

#[test]
fn lr_warms_up_linearly_then_decays_by_cosine() {
    // base 0.2 at batch 4096 → peak 3.2; 10 warm-up steps of 110.
    let s = LrSchedule::new(0.2, 4096, 10, 110);
    assert!(close(s.peak_lr, 3.2, 1e-12));
    assert_eq!(s.lr(0), 0.0);
    assert!(close(s.lr(5), 1.6, 1e-12));
    assert!(close(s.lr(10), 3.2, 1e-12));
    // Half-way through the decay: cos(π/2) = 0 → peak/2.
    assert!(close(s.lr(60), 1.6, 1e-12));
    // A quarter: (1 + cos(π/4))/2.
    assert!(close(
        s.lr(35),
        3.2 * (1.0 + (0.25 * std::f64::consts::PI).cos()) / 2.0,
        1e-12
    ));
    assert!(s.lr(110).abs() < 1e-12);
}

#[test]
fn time_indexed_schedules_equal_the_step_ones_at_the_same_progress() {
    // A time-budgeted run reads the schedules at its share of the budget: the same curves.
    let s = LrSchedule::new(0.2, 4096, 10, 110);
    for step in [0, 3, 5, 10, 35, 60, 97, 110] {
        let progress = step as f64 / 110.0;
        assert!(close(s.lr_at(progress), s.lr(step), 1e-12), "step {step}");
        assert!(
            close(tau_at(0.99, progress), tau_schedule(0.99, step, 110), 1e-12),
            "step {step}"
        );
    }
    // Between steps, continuous; past the end, the end.
    assert!(s.lr_at(5.5 / 110.0) > s.lr(5) && s.lr_at(5.5 / 110.0) < s.lr(6));
    assert_eq!(s.lr_at(1.5), 0.0);
    assert!(close(tau_at(0.99, 1.5), 1.0, 1e-12));
    // No warm-up, and a warm-up as long as the run.
    assert!(close(
        LrSchedule::new(0.2, 4096, 0, 110).lr_at(0.0),
        3.2,
        1e-12
    ));
    assert!(close(
        LrSchedule::new(0.2, 4096, 110, 110).lr_at(0.5),
        1.6,
        1e-12
    ));
}

#[test]
fn presets_carry_the_papers_numbers() {
    let v: Vec<_> = [
        "imagenet-40ep",
        "imagenet-100ep",
        "imagenet-300ep",
        "imagenet-1000ep",
    ]
    .iter()
    .map(|s| s.parse::<Preset>().map(|p| p.values()))
    .collect::<Result<_, _>>()
    .expect("the four presets parse");
    let got: Vec<(u64, f64, f64, f64)> = v
        .iter()
        .map(|p| (p.epochs, p.base_lr, p.weight_decay, p.tau_base))
        .collect();
    assert_eq!(
        got,
        vec![
            (40, 0.45, 1e-6, 0.97),
            (100, 0.45, 1e-6, 0.99),
            (300, 0.3, 1e-6, 0.99),
            (1000, 0.2, 1.5e-6, 0.996)
        ]
    );
    assert!(v
        .iter()
        .all(|p| p.warmup_epochs == 10 && p.batch_size == 4096));
    let err = "imagenet-7ep".parse::<Preset>().unwrap_err().to_string();
    assert!(err.contains("preset"), "{err}");
}

fn vec_of(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn one_lars_step_matches_the_hand_computation() {
    let dev = test_device();
    let mut store = VarStore::new(dev, 0);
    let (w, b, gamma) = {
        let mut root = store.root();
        let w = root.constant("fc.weight", &[2], 0.0, Role::Weight).unwrap();
        let b = root.constant("fc.bias", &[2], 0.0, Role::Bias).unwrap();
        let g = root
            .constant("bn.weight", &[2], 0.0, Role::NormScale)
            .unwrap();
        (w, b, g)
    };
    w.set(&Tensor::new(&[3f32, 4.], dev).unwrap()).unwrap();
    b.set(&Tensor::new(&[1f32, -1.], dev).unwrap()).unwrap();
    gamma.set(&Tensor::new(&[1f32, 1.], dev).unwrap()).unwrap();
    // loss = Σ c·param gives gradients equal to c.
    let gw = Tensor::new(&[0.6f32, 0.8], dev).unwrap();
    let gb = Tensor::new(&[0.5f32, 0.25], dev).unwrap();
    let gg = Tensor::new(&[2f32, -2.], dev).unwrap();
    let loss = ((w.as_tensor() * &gw).unwrap().sum_all().unwrap()
        + (b.as_tensor() * &gb).unwrap().sum_all().unwrap()
        + (gamma.as_tensor() * &gg).unwrap().sum_all().unwrap())
    .unwrap();
    let grads = loss.backward().unwrap();
    let cfg = LarsConfig {
        momentum: 0.9,
        eta: 1e-3,
        weight_decay: 0.1,
    };
    let mut lars = Lars::new(cfg);
    lars.step(&store, &grads, 0.5, &|_| 1.0).unwrap();
    // Weight: g = (0.6, 0.8) + 0.1·(3, 4) = (0.9, 1.2), ‖g‖ = 1.5, ‖w‖ = 5,
    // trust = 1e-3·5/1.5; m = trust·g = (0.003, 0.004); w ← w − 0.5·m.
    let w1 = vec_of(w.as_tensor());
    assert!(close(w1[0] as f64, 3.0 - 0.5 * 0.003, 1e-6), "{w1:?}");
    assert!(close(w1[1] as f64, 4.0 - 0.5 * 0.004, 1e-6), "{w1:?}");
    // Bias and BN scale: no decay, no trust ratio: w ← w − 0.5·g.
    let b1 = vec_of(b.as_tensor());
    assert!(close(b1[0] as f64, 1.0 - 0.25, 1e-6) && close(b1[1] as f64, -1.0 - 0.125, 1e-6));
    let g1 = vec_of(gamma.as_tensor());
    assert!(
        close(g1[0] as f64, 0.0, 1e-6) && close(g1[1] as f64, 2.0, 1e-6),
        "{g1:?}"
    );

    // Second step with the same gradient shows the momentum: m ← 0.9·m + g.
    let loss = ((w.as_tensor() * &gw).unwrap().sum_all().unwrap()
        + (b.as_tensor() * &gb).unwrap().sum_all().unwrap())
    .unwrap();
    let grads = loss.backward().unwrap();
    lars.step(&store, &grads, 1.0, &|name| {
        if name.ends_with("bias") {
            2.0
        } else {
            1.0
        }
    })
    .unwrap();
    let b2 = vec_of(b.as_tensor());
    // m = 0.9·0.5 + 0.5 = 0.95, lr 1·2 → b = 0.75 − 1.9.
    assert!(close(b2[0] as f64, 0.75 - 1.9, 1e-6), "{b2:?}");
    // No autograd history in the buffers: one would chain every step's buffers together and
    // keep them alive (memory grew ~0.9 GB per ResNet-50 step when it did).
    assert!(lars.momentum_buffers().values().all(|m| !m.track_op()));
}

#[test]
fn lars_trust_ratio_is_one_for_a_zero_weight() {
    let dev = test_device();
    let mut store = VarStore::new(dev, 0);
    let w = store.root().constant("w", &[2], 0.0, Role::Weight).unwrap();
    let g = Tensor::new(&[1f32, 2.], dev).unwrap();
    let grads = (w.as_tensor() * &g)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let mut lars = Lars::new(LarsConfig::default());
    lars.step(&store, &grads, 0.1, &|_| 1.0).unwrap();
    assert_eq!(vec_of(w.as_tensor()), vec![-0.1, -0.2]);
}

#[test]
fn loss_equals_the_closed_form() {
    let dev = test_device();
    let p = Tensor::new(&[[3f32, 4.], [1., 0.]], dev).unwrap();
    let z = Tensor::new(&[[4f32, 3.], [0., 2.]], dev).unwrap();
    // cos = 24/25 and 0 → ℓ = 2 − 2cos.
    let l = regression_loss(&p, &z).unwrap().to_vec1::<f32>().unwrap();
    assert!(close(l[0] as f64, 2.0 - 48.0 / 25.0, 1e-6) && close(l[1] as f64, 2.0, 1e-6));
    // Equals ‖p/‖p‖ − z/‖z‖‖².
    let d0 = (0.6f64 - 0.8).powi(2) + (0.8f64 - 0.6).powi(2);
    assert!(close(l[0] as f64, d0, 1e-6));
    // Symmetric: the two directions ADD per sample, then the batch mean.
    let p2 = Tensor::new(&[[1f32, 0.], [0., 1.]], dev).unwrap();
    let z1 = Tensor::new(&[[-1f32, 0.], [0., 1.]], dev).unwrap();
    let s = symmetric_loss(&p, &p2, &z1, &z)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    // ℓ(p, z) = [0.08, 2]; ℓ(p2, z1) = [4, 0] → mean of [4.08, 2] = 3.04.
    assert!(close(s as f64, 3.04, 1e-6), "{s}");
}

#[test]
fn no_gradient_reaches_the_target() {
    let dev = test_device();
    let mut store = VarStore::new(dev, 1);
    let (p, z) = {
        let mut root = store.root();
        (
            root.normal("p", &[3, 4], 1.0, Role::Weight).unwrap(),
            root.normal("z", &[3, 4], 1.0, Role::Weight).unwrap(),
        )
    };
    let grads = regression_loss(p.as_tensor(), z.as_tensor())
        .unwrap()
        .mean_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(grads.get(p.as_tensor()).is_some());
    assert!(grads.get(z.as_tensor()).is_none());
}

#[test]
fn ema_moves_parameters_and_leaves_running_statistics() {
    let dev = test_device();
    let build = |value: f32| {
        let mut s = VarStore::new(dev, 0);
        let mut root = s.root();
        root.constant("w", &[2], value, Role::Weight).unwrap();
        root.constant("bn.running_mean", &[2], value, Role::RunningMean)
            .unwrap();
        s
    };
    let online = build(1.0);
    let target = build(3.0);
    ema_update(&target, &online, 0.75).unwrap();
    // ξ = 0.75·3 + 0.25·1 = 2.5; the running mean keeps the target's own value.
    assert_eq!(
        vec_of(target.get("w").unwrap().var.as_tensor()),
        vec![2.5, 2.5]
    );
    assert_eq!(
        vec_of(target.get("bn.running_mean").unwrap().var.as_tensor()),
        vec![3.0, 3.0]
    );
}
