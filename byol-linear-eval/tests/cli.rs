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
