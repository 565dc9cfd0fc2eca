//! Hub publish and pull against loopback servers, never the internet: `byol_tests::hub_server`
//! (the endpoints hf-hub's upload and download paths call) for publish → pull → identical
//! tensors, the offline mode, the token and the error paths.

use std::path::Path;
use std::time::{Duration, Instant};

use byol_hub::{download, publish, HubOptions, PublishOptions};
use byol_tests::hub_server::{canned_server, silent_server, HubServer};
use byol_tests::{assert_same_tensors, save_tiny_encoder};
use candle_core::Device;
use serde_json::json;

const TOKEN: &str = "hf_loopbackSECRETtoken123";

fn linear_report(dir: &Path) {
    let report = json!({
        "protocol": "logistic", "protocol_description": "L2 logistic regression on frozen features",
        "dataset": "fashion-mnist", "data_dir": "/data/fm",
        "weights": {"extractor": "encoder", "path": "encoder.safetensors", "sha256": null, "architecture": "resnet18"},
        "splits": {"train": 100, "val": 0, "test": 50}, "feature_dim": 32,
        "hyperparameters": {"lambda": 0.001}, "top1": 0.8125, "top5": 0.99,
        "mean_per_class_accuracy": 0.81, "class_names": ["a", "b"],
        "per_class_accuracy": [0.8, null], "confusion_matrix": [[1, 0], [0, 1]], "seconds": 1.5
    });
    std::fs::write(
        dir.join("logistic.json"),
        serde_json::to_vec_pretty(&report).unwrap(),
    )
    .unwrap();
}

fn run_dir(dir: &Path) {
    save_tiny_encoder(&dir.join("encoder.safetensors"), 3);
    save_tiny_encoder(&dir.join("state-20.safetensors"), 4);
    std::fs::write(dir.join("config.toml"), "batch_size = 8\nbase_lr = 0.2\n").unwrap();
    linear_report(dir);
    // Non-UTF-8 PNG bytes (a truncated signature is enough for byte-for-byte checks).
    std::fs::write(dir.join("loss.png"), b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe").unwrap();
    std::fs::write(dir.join("probe.json"), b"[]").unwrap(); // not a report: skipped
}

#[test]
fn publish_then_pull_offline_token_and_errors_on_loopback() {
    // Isolated HF_HOME (no developer token file), the token from HF_TOKEN. Only this test in this
    // binary touches the environment.
    let home = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HOME", home.path());
    std::env::set_var("HF_TOKEN", TOKEN);
    std::env::remove_var("HF_HUB_OFFLINE");

    let server = HubServer::start();
    let run = tempfile::tempdir().unwrap();
    run_dir(run.path());
    let cache = tempfile::tempdir().unwrap();
    let hub = HubOptions {
        endpoint: Some(server.url.clone()),
        cache_dir: Some(cache.path().to_path_buf()),
        offline: false,
        retries: Some(1),
        ..HubOptions::default()
    };

    // Publish: one commit with every file, byte for byte.
    let opts = PublishOptions {
        include_state: true,
        datasets: vec!["fashion_mnist".into()],
        ..PublishOptions::new("byol-rs/tiny")
    };
    let done = publish(run.path(), &opts, &hub).unwrap();
    let commit = done.commit.clone().expect("commit id");
    let files = server.files("byol-rs/tiny");
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "README.md",
            "config.json",
            "eval/logistic.json",
            "loss.png",
            "model.safetensors",
            "training_state.safetensors"
        ]
    );
    let read = |p: &str| std::fs::read(run.path().join(p)).unwrap();
    assert_eq!(files["model.safetensors"], read("encoder.safetensors"));
    assert_eq!(
        files["training_state.safetensors"],
        read("state-20.safetensors")
    );
    assert_eq!(files["loss.png"], read("loss.png"));
    assert_eq!(files["eval/logistic.json"], read("logistic.json"));
    let card = String::from_utf8(files["README.md"].clone()).unwrap();
    for needle in [
        "library_name: byol-rs",
        "- byol\n- self-supervised\n- image-feature-extraction",
        "license: \"apache-2.0\"",
        "- \"fashion_mnist\"",
        "model-index:",
        "name: \"Linear evaluation (logistic)\"",
        "value: 81.25",
        "value: 99.00",
    ] {
        assert!(card.contains(needle), "card lacks {needle:?}:\n{card}");
    }
    let config: serde_json::Value = serde_json::from_slice(&files["config.json"]).unwrap();
    assert_eq!(config["architecture"], "resnet18");
    assert_eq!(config["pretrain"]["base_lr"], 0.2);
    assert_eq!(config["encoder"]["base_channels"], 4);
    // The upload path: create, preupload, LFS batch negotiation, NDJSON commit; the token sent.
    let log = server.log();
    for (method, path) in [
        ("POST", "/api/repos/create"),
        ("POST", "/api/models/byol-rs/tiny/preupload/main"),
        ("POST", "/byol-rs/tiny.git/info/lfs/objects/batch"),
        ("POST", "/api/models/byol-rs/tiny/commit/main"),
    ] {
        assert!(
            log.iter()
                .any(|(m, p, auth)| m == method && p == path && *auth),
            "{method} {path} missing or without token: {log:?}"
        );
    }
    assert!(server
        .state
        .lock()
        .unwrap()
        .tokens
        .iter()
        .all(|t| t == &format!("Bearer {TOKEN}")));
    // Publishing again into the existing repository adds a commit.
    publish(run.path(), &opts, &hub).unwrap();

    // Pull: the default file, by branch, by commit id, another file; identical tensors.
    let r = |s: &str| match s.parse::<byol_hub::WeightsRef>().unwrap() {
        byol_hub::WeightsRef::Hub(h) => h,
        _ => unreachable!(),
    };
    let pulled = download(&r("hf://byol-rs/tiny"), &hub).unwrap();
    assert_same_tensors(&pulled, &run.path().join("encoder.safetensors"));
    assert!(pulled.starts_with(cache.path()), "{}", pulled.display());
    let at_commit = download(
        &r(&format!("hf://byol-rs/tiny@{commit}/model.safetensors")),
        &hub,
    )
    .unwrap();
    assert_same_tensors(&at_commit, &run.path().join("encoder.safetensors"));
    let cfg = download(&r("hf://byol-rs/tiny@main/config.json"), &hub).unwrap();
    assert_eq!(std::fs::read(cfg).unwrap(), files["config.json"]);
    // The pulled file loads as an encoder (through the same loader as every binary).
    byol_core::weights::load_encoder(&pulled, &Device::Cpu, None).unwrap();

    // Offline: the cache serves what was pulled, and nothing else, without a request.
    let offline = HubOptions {
        offline: true,
        ..hub.clone()
    };
    let requests = server.log().len();
    let again = download(&r("hf://byol-rs/tiny"), &offline).unwrap();
    assert_same_tensors(&again, &pulled);
    let err = download(&r("hf://byol-rs/tiny/README.md"), &offline)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("HF_HUB_OFFLINE") && err.contains("README.md"),
        "{err}"
    );
    assert_eq!(server.log().len(), requests, "offline mode made requests");
    let err = publish(run.path(), &opts, &offline)
        .unwrap_err()
        .to_string();
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");

    // Errors: each names what is missing; none shows the token.
    let fresh = HubOptions {
        cache_dir: Some(tempfile::tempdir().unwrap().keep()),
        ..hub.clone()
    };
    let cases = [
        (
            "hf://byol-rs/absent",
            "repository `byol-rs/absent` not found",
        ),
        ("hf://byol-rs/tiny@v9", "revision `v9` not found"),
        (
            "hf://byol-rs/tiny/nope.safetensors",
            "no file `nope.safetensors`",
        ),
    ];
    for (reference, expected) in cases {
        let err = download(&r(reference), &fresh).unwrap_err().to_string();
        assert!(
            err.contains(expected) && err.contains(reference),
            "{reference}: {err}"
        );
        assert!(!err.contains(TOKEN));
    }
    // Network failure: nothing listens on the port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let unreachable = HubOptions {
        endpoint: Some(dead.clone()),
        ..fresh.clone()
    };
    let err = download(&r("hf://byol-rs/tiny"), &unreachable)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot reach") && err.contains(&dead), "{err}");
    assert!(!err.contains(TOKEN));
    let err = publish(run.path(), &opts, &unreachable)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&dead) && !err.contains(TOKEN), "{err}");

    // The resolver every binary uses, configured by the environment alone.
    std::env::set_var("HF_ENDPOINT", &server.url);
    std::env::set_var("HF_HUB_CACHE", cache.path());
    let via_env = byol_hub::resolve_weights("hf://byol-rs/tiny").unwrap();
    assert_same_tensors(&via_env, &pulled);
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let err = byol_hub::resolve_weights("hf://byol-rs/tiny/README.md")
        .unwrap_err()
        .to_string();
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
    std::env::remove_var("HF_HUB_OFFLINE");
    let err = byol_hub::resolve_weights("no/such/file.safetensors")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no such file"), "{err}");
}

fn hub_ref(s: &str) -> byol_hub::HubRef {
    match s.parse().unwrap() {
        byol_hub::WeightsRef::Hub(h) => h,
        other => panic!("{other:?}"),
    }
}

/// Options for the hostile servers below: an explicit token (the environment's, which the test
/// above sets, is not used), a fresh cache.
fn hostile(endpoint: &str, token: &str) -> HubOptions {
    HubOptions {
        endpoint: Some(endpoint.to_string()),
        cache_dir: Some(tempfile::tempdir().unwrap().keep()),
        token: Some(token.to_string()),
        ..HubOptions::default()
    }
}

#[test]
fn a_server_that_never_answers_times_out_naming_the_endpoint() {
    let url = silent_server();
    let run = tempfile::tempdir().unwrap();
    run_dir(run.path());
    // As HF_HUB_ETAG_TIMEOUT=1 and HF_HUB_DOWNLOAD_TIMEOUT=1 set them; default retries.
    let one = byol_hub::options::parse_timeout("HF_HUB_DOWNLOAD_TIMEOUT", "1").unwrap();
    let hub = HubOptions {
        etag_timeout: Some(one),
        download_timeout: Some(one),
        ..hostile(&url, "hf_silentTOKENabcdefghijklmn")
    };
    let start = Instant::now();
    let err = download(&hub_ref("hf://byol-rs/tiny"), &hub)
        .unwrap_err()
        .to_string();
    let took = start.elapsed();
    assert!(took < Duration::from_secs(20), "pull took {took:?}: {err}");
    assert!(
        err.contains(&url) && err.contains("hf://byol-rs/tiny"),
        "{err}"
    );
    assert!(err.contains("HF_HUB_DOWNLOAD_TIMEOUT"), "{err}");
    let start = Instant::now();
    let err = publish(run.path(), &PublishOptions::new("byol-rs/tiny"), &hub)
        .unwrap_err()
        .to_string();
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "publish took {took:?}: {err}"
    );
    assert!(err.contains(&url), "{err}");
}

#[test]
fn a_reflected_token_is_redacted_and_a_rejected_token_is_called_rejected() {
    let run = tempfile::tempdir().unwrap();
    run_dir(run.path());
    // The errors of a pull and of a publish against the same server.
    let errors = |hub: &HubOptions| {
        [
            download(&hub_ref("hf://byol-rs/tiny"), hub)
                .unwrap_err()
                .to_string(),
            publish(run.path(), &PublishOptions::new("byol-rs/tiny"), hub)
                .unwrap_err()
                .to_string(),
        ]
    };
    // Hub-shaped and not: the exact value is replaced either way.
    for token in ["hf_reflectedSECRETabcdefghij", "plain-s3cret-Value"] {
        let reflect = vec![(
            "x-error-message".to_string(),
            format!("token {token} is not valid here"),
        )];
        let url = canned_server(
            500,
            reflect.clone(),
            json!({ "error": format!("internal: Bearer {token}") }),
        );
        let hub = HubOptions {
            retries: Some(0),
            ..hostile(&url, token)
        };
        for err in errors(&hub) {
            assert!(!err.contains(token), "token printed: {err}");
            assert!(err.contains("hf_***"), "{err}");
        }

        let url = canned_server(401, reflect, json!({ "error": format!("bad {token}") }));
        let hub = hostile(&url, token);
        for err in errors(&hub) {
            assert!(!err.contains(token), "token printed: {err}");
            assert!(err.contains("token was rejected"), "{err}");
            assert!(!err.contains("set HF_TOKEN"), "{err}");
            assert!(err.contains(&url), "{err}");
        }
    }
}

#[test]
fn a_framework_checkpoint_pulled_from_the_hub_is_sniffed_after_download() {
    use byol_core::weights::{load_encoder_part, Framework, Part};
    let server = HubServer::start();
    let ckpt = std::fs::read(byol_tests::fixture("frameworks/solo-learn.ckpt")).unwrap();
    server.state.lock().unwrap().repos.insert(
        "someone/solo-byol".into(),
        vec![byol_tests::hub_server::Commit {
            oid: "0123456789abcdef0123456789abcdef01234567".into(),
            message: "a solo-learn run".into(),
            files: [("checkpoints/last.ckpt".to_string(), ckpt)].into(),
        }],
    );
    let cache = tempfile::tempdir().unwrap();
    let hub = HubOptions {
        endpoint: Some(server.url.clone()),
        cache_dir: Some(cache.path().to_path_buf()),
        offline: false,
        retries: Some(0),
        token: Some(TOKEN.into()),
        ..HubOptions::default()
    };
    let pulled = download(
        &hub_ref("hf://someone/solo-byol/checkpoints/last.ckpt"),
        &hub,
    )
    .unwrap();
    // Both encoders of the downloaded file, its format found from its bytes.
    for part in [Part::Online, Part::Target] {
        let loaded = load_encoder_part(&pulled, &Device::Cpu, None, part).unwrap();
        assert_eq!(loaded.source.framework, Framework::SoloLearn);
        assert_eq!(loaded.source.part, part);
    }
}
