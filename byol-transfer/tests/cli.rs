//! The binary itself on the miniature VOCdevkit: `--task voc`, `voc-svm` and `voc-seg` end to
//! end from the command line, and the message for a missing class file.

use std::path::Path;
use std::process::Output;

use byol_tests::fixtures::MiniVoc;
use byol_tests::{output_text, run_binary, write_tiny_encoder};

fn run(args: &[&str]) -> Output {
    run_binary(env!("CARGO_BIN_EXE_byol-transfer"), args)
}

fn text(o: &Output) -> String {
    output_text(o)
}

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("report written")).expect("json")
}

#[test]
fn the_three_tasks_run_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let devkit = MiniVoc::default().write(dir.path());
    let weights = write_tiny_encoder(dir.path(), 0);
    let (data, w) = (devkit.to_str().unwrap(), weights.to_str().unwrap());
    let out = dir.path().join("out");
    let out_s = out.to_str().unwrap();
    let base = [
        "--weights",
        w,
        "--data",
        data,
        "--out",
        out_s,
        "--image-size",
        "32",
    ];

    for task in ["voc", "voc-svm"] {
        let mut args = vec!["--task", task, "--lambdas", "5"];
        args.extend(base);
        let o = run(&args);
        assert!(o.status.success(), "{task}: {}", text(&o));
        let r = report(&out.join(format!("transfer-{task}.json")));
        assert_eq!(r["per_class"].as_array().unwrap().len(), 20, "{task}");
        let map = r["value"].as_f64().unwrap();
        // 11-point AP sums p/11 as the devkit does: 1 can come out one ulp above.
        assert!((0.0..=1.0 + 1e-9).contains(&map), "{task}: {map}");
    }
    assert!(report(&out.join("transfer-voc-svm.json"))["protocol"]
        .as_str()
        .unwrap()
        .contains("SVM"));

    let mut args = vec!["--task", "voc-seg", "--steps", "3", "--batch-size", "4"];
    args.extend(base);
    let o = run(&args);
    assert!(o.status.success(), "voc-seg: {}", text(&o));
    let r = report(&out.join("transfer-voc-seg.json"));
    assert_eq!(r["per_class"].as_array().unwrap().len(), 21);
    assert!((0.0..=1.0).contains(&r["value"].as_f64().unwrap()));

    // The target encoder of another framework's checkpoint (mmselfsup 1.x's EMA network).
    let mm = byol_tests::fixture("frameworks/mmselfsup-1.x.pth");
    let mut args = vec!["--task", "voc", "--lambdas", "3", "--part", "target"];
    args.extend(base);
    let at = args.iter().position(|a| *a == w).unwrap();
    args[at] = mm.to_str().unwrap();
    let o = run(&args);
    assert!(o.status.success(), "voc --part target: {}", text(&o));
    let r = report(&out.join("transfer-voc.json"));
    assert_eq!(r["weights"]["part"], "target");
    let o = run(&[
        "--task",
        "voc",
        "--weights",
        "none",
        "--part",
        "target",
        "--data",
        data,
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--part target"), "{}", text(&o));

    // A missing class file is named.
    std::fs::remove_file(devkit.join("VOC2007/ImageSets/Main/cat_test.txt")).unwrap();
    let mut args = vec!["--task", "voc"];
    args.extend(base);
    let o = run(&args);
    assert!(!o.status.success());
    assert!(text(&o).contains("cat_test.txt"), "{}", text(&o));
}
