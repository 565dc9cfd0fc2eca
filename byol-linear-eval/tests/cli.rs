//! The binary itself: every mode from the command line on a generated MNIST-layout dataset,
//! and the messages a user sees for bad flags.

use std::path::Path;
use std::process::Output;

use byol_tests::{output_text, run_binary, save_tiny_encoder, write_mnist_like};

fn run(args: &[&str]) -> Output {
    run_binary(env!("CARGO_BIN_EXE_byol-linear-eval"), args)
}

fn text(o: &Output) -> String {
    output_text(o)
}

fn common<'a>(data: &'a str, out: &'a str, weights: &'a str) -> Vec<&'a str> {
    vec![
        "--dataset",
        "mnist",
        "--data",
        data,
        "--out",
        out,
        "--weights",
        weights,
        "--batch-size",
        "32",
    ]
}

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("report written")).expect("json")
}

#[test]
fn every_mode_runs_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_mnist_like(&data, 60, 30, 3, 5);
    let weights = dir.path().join("encoder.safetensors");
    save_tiny_encoder(&weights, 4);
    let (data, out, w) = (
        data.to_str().unwrap(),
        dir.path().join("out"),
        weights.to_str().unwrap(),
    );
    let out = out.to_str().unwrap();

    let mut args = vec!["features"];
    args.extend(common(data, out, w));
    let o = run(&args);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("computed"), "{}", text(&o));
    let o = run(&args);
    assert!(text(&o).contains("up to date"), "{}", text(&o));

    let mut args = vec!["logistic", "--lambdas", "4"];
    args.extend(common(data, out, "none"));
    let o = run(&args);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("top-1"), "{}", text(&o));
    let r = report(&Path::new(out).join("logistic.json"));
    assert_eq!(r["weights"]["extractor"], "pixels");
    assert!(r["top1"].as_f64().unwrap() > 0.9);

    let mut args = vec!["knn", "--k", "5"];
    args.extend(common(data, out, w));
    let o = run(&args);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        report(&Path::new(out).join("knn.json"))["hyperparameters"]["k"],
        5
    );

    let mut args = vec![
        "sgd",
        "--epochs",
        "1",
        "--lrs",
        "0.1,0.2",
        "--head-batch-size",
        "16",
    ];
    args.extend(common(data, out, w));
    let o = run(&args);
    assert!(o.status.success(), "{}", text(&o));
    let r = report(&Path::new(out).join("sgd.json"));
    assert_eq!(r["splits"]["test"], 30);
    assert_eq!(
        r["hyperparameters"]["lr_grid"],
        serde_json::json!([0.1, 0.2])
    );
}

#[test]
fn bad_flags_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_mnist_like(&data, 20, 10, 2, 1);
    let out = dir.path().join("out");
    let (data, out) = (data.to_str().unwrap(), out.to_str().unwrap());

    let mut args = vec!["logistic"];
    args.extend(common(data, out, "missing.safetensors"));
    let o = run(&args);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("--weights missing.safetensors"),
        "{}",
        text(&o)
    );

    let o = run(&["knn", "--weights", "none", "--dataset", "svhn"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("svhn"), "{}", text(&o));

    let mut args = vec!["logistic", "--lambda-min=-1"];
    args.extend(common(data, out, "none"));
    let o = run(&args);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("lambda") || text(&o).contains("λ"),
        "{}",
        text(&o)
    );

    let mut args = vec!["sgd"];
    args.extend(common(data, out, "none"));
    let o = run(&args);
    assert!(!o.status.success());
    assert!(text(&o).contains("weights"), "{}", text(&o));
}

/// Hostile files under a hard memory bound: the process runs under `prlimit --as` (1.5 GiB of
/// address space), so a reader that inflated or expanded without a limit would be killed or fail
/// to allocate instead of ending with an error naming the file.
#[test]
fn hostile_files_end_in_an_error_within_a_memory_bound() {
    if std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("prlimit (util-linux) is not installed: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_mnist_like(&data, 20, 10, 3, 1);
    let bomb = dir.path().join("bomb.pkl");
    std::fs::write(&bomb, byol_tests::fixtures::pickle_memo_bomb()).unwrap();
    // An IDX image file whose header claims 2^31 images of 28×28, gzipped: 60 000 × 784 is
    // what Fashion-MNIST holds, this would inflate to 1.6 TB.
    let idx_dir = dir.path().join("idx");
    std::fs::create_dir_all(&idx_dir).unwrap();
    for (name, dims) in [
        ("train-images-idx3-ubyte", vec![1u32 << 31, 28, 28]),
        ("train-labels-idx1-ubyte", vec![20]),
        ("t10k-images-idx3-ubyte", vec![10, 28, 28]),
        ("t10k-labels-idx1-ubyte", vec![10]),
    ] {
        let mut bytes = vec![0, 0, 8, dims.len() as u8];
        for d in &dims {
            bytes.extend_from_slice(&d.to_be_bytes());
        }
        bytes.extend(std::iter::repeat_n(0u8, 4096));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, &bytes).unwrap();
        std::fs::write(idx_dir.join(format!("{name}.gz")), gz.finish().unwrap()).unwrap();
    }
    let bin = env!("CARGO_BIN_EXE_byol-linear-eval");
    let out_dir = dir.path().join("out");
    let (data_s, out_s, bomb_s, idx_s) = (
        data.to_str().unwrap(),
        out_dir.to_str().unwrap(),
        bomb.to_str().unwrap(),
        idx_dir.to_str().unwrap(),
    );
    let cases: [(Vec<&str>, &str); 2] = [
        (
            [
                vec!["logistic"],
                common(data_s, out_s, bomb_s),
                vec!["--arch", "resnet18"],
            ]
            .concat(),
            "bomb.pkl",
        ),
        (
            vec![
                "logistic",
                "--dataset",
                "fashion-mnist",
                "--data",
                idx_s,
                "--out",
                out_s,
                "--weights",
                "none",
            ],
            "train-images-idx3-ubyte",
        ),
    ];
    for (args, named) in cases {
        let started = std::time::Instant::now();
        let o = std::process::Command::new("prlimit")
            .arg(format!("--as={}", 1536u64 << 20))
            .arg("--")
            .arg(bin)
            .args(&args)
            .output()
            .unwrap();
        let t = text(&o);
        assert_eq!(o.status.code(), Some(1), "{named}: {t}");
        assert!(t.contains(named), "{named}: {t}");
        assert!(
            started.elapsed().as_secs() < 60,
            "{named}: {:?}",
            started.elapsed()
        );
    }
}

/// `mpirun -np 2 byol-linear-eval ...` (built with `--features mpi`): the ranks share the
/// feature passes and rank 0 writes the cache one process writes, byte for byte.
#[cfg(feature = "mpi")]
#[test]
fn two_mpi_ranks_write_the_feature_caches_of_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_mnist_like(&data, 70, 30, 3, 8);
    let weights = dir.path().join("encoder.safetensors");
    save_tiny_encoder(&weights, 4);
    let (d, w) = (data.to_str().unwrap(), weights.to_str().unwrap());
    let one = dir.path().join("one");
    let mut args = vec!["features"];
    args.extend(common(d, one.to_str().unwrap(), w));
    let o = run(&args);
    assert!(o.status.success(), "{}", text(&o));

    let two = dir.path().join("two");
    let o = std::process::Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "2"])
        .args(["-x", "RAYON_NUM_THREADS=1"])
        .arg(env!("CARGO_BIN_EXE_byol-linear-eval"))
        .arg("features")
        .args(common(d, two.to_str().unwrap(), w))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // Then rank 0 alone runs a protocol from those caches.
    let mut args = vec!["knn"];
    args.extend(common(d, two.to_str().unwrap(), w));
    let o = run(&args);
    assert!(o.status.success(), "{}", text(&o));
    for split in ["train", "test"] {
        let name = format!("mnist-{split}-encoder.safetensors");
        let a = std::fs::read(one.join("features").join(&name)).unwrap();
        let b = std::fs::read(two.join("features").join(&name)).unwrap();
        assert!(
            a == b,
            "{name}: the 2-rank cache differs from the 1-process one"
        );
    }
}

#[test]
fn inspect_describes_a_framework_checkpoint_without_running_it() {
    let solo = byol_tests::fixture("frameworks/solo-learn.ckpt");
    let solo = solo.to_str().unwrap();
    let o = run(&["inspect", "--weights", solo]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    for expected in [
        "torch.save zip archive",
        "solo-learn (PyTorch Lightning) checkpoint",
        "hyper_parameters: a `omegaconf.dictconfig.DictConfig` object, kept as data",
        "online encoder",
        "state_dict.backbone.",
        "target encoder",
        "state_dict.momentum_backbone.",
        "predictor",
        "classifier",
        "encoder:      online (`state_dict.backbone.`)",
        "resnet18 x1 Imagenet stem, 3 input channel(s), base 2 (inferred from the shapes)",
        "tensors (120):",
        "conv1.weight",
        "[2, 3, 7, 7]",
    ] {
        assert!(t.contains(expected), "{expected}: {t}");
    }
    let o = run(&["inspect", "--weights", solo, "--part", "target"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("encoder:      target (`state_dict.momentum_backbone.`)"),
        "{}",
        text(&o)
    );

    // No target encoder: the parts are listed, then an error naming the file.
    let plain = byol_tests::fixture("frameworks/lightning.ckpt");
    let o = run(&[
        "inspect",
        "--weights",
        plain.to_str().unwrap(),
        "--part",
        "target",
    ]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("state_dict.model.") && t.contains("lightning.ckpt") && t.contains("no target"),
        "{t}"
    );

    // A checkpoint that would run a shell command under torch.load: refused, nothing run.
    let marker = Path::new("/tmp/byol-rs-pwned-by-checkpoint");
    let _ = std::fs::remove_file(marker);
    let hostile = byol_tests::fixture("frameworks/hostile-posix-system.ckpt");
    let o = run(&["inspect", "--weights", hostile.to_str().unwrap()]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("refused global `posix.system`") && t.contains("hostile-posix-system.ckpt"),
        "{t}"
    );
    assert!(!marker.exists());
}

/// `train/` and `test/` image folders of two classes of flat-coloured 32×32 RGB images.
fn write_rgb_folders(root: &Path) {
    for (split, n) in [("train", 6u8), ("test", 4)] {
        for (class, rgb) in [("a", [200u8, 40, 40]), ("b", [30, 60, 220])] {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let shade = [rgb[0], rgb[1].saturating_add(10 * i), rgb[2]];
                byol_tests::fixtures::write_jpeg(&dir.join(format!("{i}.jpg")), 32, 32, shade);
            }
        }
    }
}

#[test]
fn both_parts_of_a_framework_checkpoint_evaluate_with_their_own_cache() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("folders");
    write_rgb_folders(&data);
    let out = dir.path().join("out");
    let weights = byol_tests::fixture("frameworks/mmselfsup-1.x.pth");
    let (data, out, w) = (
        data.to_str().unwrap(),
        out.to_str().unwrap(),
        weights.to_str().unwrap(),
    );
    let args = |mode: &'static str, part: &'static str| {
        vec![
            mode,
            "--dataset",
            "image-folder",
            "--data",
            data,
            "--out",
            out,
            "--weights",
            w,
            "--part",
            part,
            "--image-size",
            "32",
            "--batch-size",
            "8",
        ]
    };
    for part in ["online", "target"] {
        let o = run(&args("features", part));
        assert!(o.status.success(), "{}", text(&o));
        // The target's features are not the online ones': each is computed once.
        assert!(text(&o).contains("computed"), "{part}: {}", text(&o));
    }
    let o = run(&[args("knn", "target"), vec!["--k", "3"]].concat());
    assert!(o.status.success(), "{}", text(&o));
    let r = report(&Path::new(out).join("knn.json"));
    assert_eq!(r["weights"]["part"], "target");
    assert!(r["weights"]["architecture"]
        .as_str()
        .unwrap()
        .contains("resnet18"));

    let o = run(&[
        "knn",
        "--dataset",
        "image-folder",
        "--data",
        data,
        "--weights",
        "none",
        "--part",
        "target",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--part target"), "{}", text(&o));
}

/// `finetune` on a miniature ImageNet: a subset file, a stop after a few steps, the refusal of a
/// fresh run into the unfinished directory, `--resume` to the end; the built-in 1 % list on a
/// dataset without its images is refused before anything is written.
#[test]
fn finetune_stops_resumes_and_refuses_a_subset_the_dataset_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("imagenet");
    let wnids = ["n01440764", "n01443537"];
    byol_tests::fixtures::write_mini_imagenet(&root, &wnids, 6, 3, 16);
    let subset = dir.path().join("subset.txt");
    let list: String = wnids
        .iter()
        .flat_map(|w| (0..5).map(move |k| format!("{w}_{k}.JPEG\n")))
        .collect();
    std::fs::write(&subset, list).unwrap();
    let weights = dir.path().join("encoder.safetensors");
    save_tiny_encoder(&weights, 2);
    let out = dir.path().join("out");
    let (root_s, out_s, w, subset_s) = (
        root.to_str().unwrap(),
        out.to_str().unwrap(),
        weights.to_str().unwrap(),
        subset.to_str().unwrap(),
    );
    let args = |labels: &str, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "finetune",
            "--dataset",
            "imagenet",
            "--data",
            root_s,
            "--out",
            out_s,
            "--weights",
            w,
            "--image-size",
            "16",
            "--labels",
            labels,
            "--lrs",
            "0.5",
            "--epochs",
            "1,2",
            "--train-batch-size",
            "4",
            "--val-fraction",
            "0.2",
        ]
        .map(String::from)
        .to_vec();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let go = |a: Vec<String>| {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        run(&refs)
    };

    let o = go(args("1%", &[]));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    for needle in ["1percent.txt", "line 1 `n04235860_14959.JPEG`"] {
        assert!(text(&o).contains(needle), "{needle}: {}", text(&o));
    }
    assert!(!out.exists(), "a refused run writes nothing");

    let o = go(args(subset_s, &["--stop-after-steps", "3"]));
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("interrupted at step"), "{}", text(&o));
    assert!(out.join("semi-supervised-state.safetensors").exists());
    let o = go(args(subset_s, &[]));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("--resume"), "{}", text(&o));
    let o = go(args(subset_s, &["--resume"]));
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("top-1"), "{}", text(&o));
    assert!(text(&o).contains("images/s"), "{}", text(&o));
    let r = report(&out.join("semi-supervised.json"));
    assert_eq!(r["protocol"], "semi-supervised");
    assert_eq!(r["hyperparameters"]["labels"], "subset.txt");
    assert_eq!(r["hyperparameters"]["labelled_images"], 10);
    assert_eq!(r["splits"]["test"], 6);
    assert!(!out.join("semi-supervised-progress.json").exists());
}

/// SIGTERM (what Slurm and `timeout` send) and SIGINT checkpoint the fine-tuning run and exit 0.
#[test]
fn finetune_checkpoints_on_sigterm_and_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_mnist_like(&data, 200, 20, 2, 3);
    let weights = dir.path().join("encoder.safetensors");
    save_tiny_encoder(&weights, 1);
    for signal in ["-TERM", "-INT"] {
        let out = dir.path().join(format!("out{signal}"));
        let mut args = vec![
            "finetune",
            "--labels",
            "50%",
            "--lrs",
            "0.1",
            "--epochs",
            "1000",
            "--train-batch-size",
            "8",
            "--checkpoint-every",
            "1",
        ];
        args.extend(common(
            data.to_str().unwrap(),
            out.to_str().unwrap(),
            weights.to_str().unwrap(),
        ));
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_byol-linear-eval"))
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let state = out.join("semi-supervised-state.safetensors");
        let start = std::time::Instant::now();
        while !state.exists() {
            assert!(child.try_wait().unwrap().is_none(), "the run ended early");
            assert!(start.elapsed().as_secs() < 120, "no checkpoint");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let status = std::process::Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{signal}: {}", text(&o));
        assert!(
            text(&o).contains("interrupted at step"),
            "{signal}: {}",
            text(&o)
        );
        assert!(state.exists());
    }
}
