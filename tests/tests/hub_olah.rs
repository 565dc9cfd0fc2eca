//! Downloads through hf-hub from a real third-party Hub-compatible server on loopback: olah (PyPI
//! `olah`, a self-hosted Hub mirror) serving a local git repository offline. The repository holds
//! exactly what `byol-pretrain publish` would upload (`hub::publish::prepare`); the pulled encoder
//! must give identical tensors.
//!
//! `.ci/run` installs olah in `.ci/olah-venv` and sets `BYOL_OLAH` to its `olah-cli`; without
//! either the test says so and returns.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use byol_hub::publish::prepare;
use byol_hub::{download, HubOptions, PublishOptions};
use byol_hub::{HubRef, WeightsRef};
use byol_tests::{assert_same_tensors, save_tiny_encoder};
use candle_core::Device;

fn olah_cli() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("BYOL_OLAH") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "BYOL_OLAH={} does not exist", p.display());
        return Some(p);
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/olah-venv/bin/olah-cli");
    local.is_file().then_some(local)
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args([
            "-c",
            "user.name=byol-rs",
            "-c",
            "user.email=ci@byol-rs.invalid",
        ])
        .args(args)
        .current_dir(dir)
        .status()
        .expect("git runs")
        .success();
    assert!(ok, "git {args:?}");
}

fn hub_ref(s: &str) -> HubRef {
    match s.parse::<WeightsRef>().unwrap() {
        WeightsRef::Hub(h) => h,
        other => panic!("{other:?}"),
    }
}

#[test]
fn pull_from_olah_mirror_gives_identical_tensors() {
    let Some(cli) = olah_cli() else {
        eprintln!("skipped: olah is not installed (.ci/run installs it in .ci/olah-venv)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    save_tiny_encoder(&run.join("encoder.safetensors"), 5);
    std::fs::write(run.join("config.toml"), "batch_size = 8\n").unwrap();

    // The mirror: <mirrors>/models/<owner>/<name> is a git repository.
    let repo = tmp.path().join("mirrors/models/byol-rs/tiny-olah");
    std::fs::create_dir_all(&repo).unwrap();
    let files = prepare(&run, &PublishOptions::new("byol-rs/tiny-olah")).unwrap();
    for f in &files {
        let p = repo.join(&f.path_in_repo);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, &f.content).unwrap();
    }
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "publish"]);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = tmp.path().join("olah.toml");
    std::fs::write(
        &config,
        format!(
            "[basic]\nhost = \"127.0.0.1\"\nport = {port}\nrepos-path = \"{repos}\"\n\
             mirror-scheme = \"http\"\nmirror-netloc = \"127.0.0.1:{port}\"\n\
             mirror-lfs-netloc = \"127.0.0.1:{port}\"\nmirrors-path = [\"{mirrors}\"]\n\n\
             [accessibility]\noffline = true\n",
            repos = tmp.path().join("repos").display(),
            mirrors = tmp.path().join("mirrors").display(),
        ),
    )
    .unwrap();
    let log = std::fs::File::create(tmp.path().join("olah.log")).unwrap();
    let _server = Server(
        Command::new(&cli)
            .arg("-c")
            .arg(&config)
            .current_dir(tmp.path())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("olah starts"),
    );
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "olah did not listen: {}",
            std::fs::read_to_string(tmp.path().join("olah.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let hub = HubOptions {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        cache_dir: Some(tmp.path().join("cache")),
        offline: false,
        retries: Some(1),
        ..HubOptions::default()
    };
    let pulled = download(&hub_ref("hf://byol-rs/tiny-olah"), &hub).unwrap();
    assert_same_tensors(&pulled, &run.join("encoder.safetensors"));
    assert_eq!(
        std::fs::read(&pulled).unwrap(),
        std::fs::read(run.join("encoder.safetensors")).unwrap()
    );
    let card = download(&hub_ref("hf://byol-rs/tiny-olah@main/README.md"), &hub).unwrap();
    assert!(std::fs::read_to_string(card)
        .unwrap()
        .contains("library_name: byol-rs"));
    byol_core::weights::load_encoder(&pulled, &Device::Cpu, None).unwrap();

    // Offline afterwards: served from the cache.
    let offline = HubOptions {
        offline: true,
        ..hub.clone()
    };
    assert_eq!(
        download(&hub_ref("hf://byol-rs/tiny-olah"), &offline).unwrap(),
        pulled
    );
}
