//! Publishing a pretraining output directory to a Hub repository in one commit.
//!
//! The commit holds `model.safetensors` (the run's `encoder.safetensors`, torchvision names and
//! config metadata, byte for byte), `config.json`, the `README.md` model card, the evaluation
//! reports it was built from (under `eval/`), PNG plots of the directory (the loss curve), and
//! with [`PublishOptions::include_state`] the newest training state as
//! `training_state.safetensors`.

use std::path::{Path, PathBuf};

use hf_hub::repository::CommitOperation;
use hf_hub::RepoTypeModel;

use byol_core::io::{SafetensorsFile, ENCODER_CONFIG_KEY};
use byol_core::nn::ResNetConfig;

use crate::card::{config_json, model_card, CardInfo, Report};
use crate::reference::{check_repo_id, check_revision};
use crate::{Error, HubOptions, Result};

/// What to publish and where.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// `owner/name`; created if missing.
    pub repo: String,
    /// Branch to commit to (default `main`).
    pub revision: Option<String>,
    pub private: bool,
    /// Also upload the newest `state-<step>.safetensors` as `training_state.safetensors`.
    pub include_state: bool,
    /// Reports to put in the card besides the `*.json` reports found in the directory.
    pub reports: Vec<PathBuf>,
    /// Hub dataset ids of the pretraining data.
    pub datasets: Vec<String>,
    pub license: String,
    pub commit_message: Option<String>,
}

impl PublishOptions {
    pub fn new(repo: impl Into<String>) -> Self {
        Self {
            repo: repo.into(),
            revision: None,
            private: false,
            include_state: false,
            reports: Vec::new(),
            datasets: Vec::new(),
            license: "apache-2.0".into(),
            commit_message: None,
        }
    }
}

/// One file of the commit: its path in the repo and its content.
#[derive(Debug, Clone, PartialEq)]
pub struct RepoFile {
    pub path_in_repo: String,
    pub content: Vec<u8>,
}

/// The result of a publish.
#[derive(Debug, Clone)]
pub struct Published {
    pub repo: String,
    pub commit: Option<String>,
    pub files: Vec<String>,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// Sorted entries of `dir` whose names satisfy `keep`.
fn entries(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.file_name().and_then(|n| n.to_str()).is_some_and(&keep))
        .collect();
    v.sort();
    Ok(v)
}

/// The files a publish of `out_dir` would upload, built locally (no network).
pub fn prepare(out_dir: &Path, opts: &PublishOptions) -> Result<Vec<RepoFile>> {
    let encoder_path = out_dir.join("encoder.safetensors");
    if !encoder_path.is_file() {
        return Err(Error::format(
            &encoder_path,
            "missing: publish takes a byol-pretrain output directory",
        ));
    }
    let encoder_file = SafetensorsFile::read(&encoder_path, &candle_core::Device::Cpu)?;
    let encoder: ResNetConfig = encoder_file.metadata_json(&encoder_path, ENCODER_CONFIG_KEY)?;
    let recipe = {
        let p = out_dir.join("config.toml");
        if p.is_file() {
            let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
            let v: toml::Value = toml::from_str(&text)
                .map_err(|e| Error::format(&p, format!("not valid TOML: {e}")))?;
            Some(serde_json::to_value(v).map_err(|e| Error::format(&p, e.to_string()))?)
        } else {
            None
        }
    };

    let mut files = vec![RepoFile {
        path_in_repo: "model.safetensors".into(),
        content: read(&encoder_path)?,
    }];
    let mut listed = vec![(
        "model.safetensors".to_string(),
        "the encoder, torchvision names, config in the metadata".to_string(),
    )];
    files.push(RepoFile {
        path_in_repo: "config.json".into(),
        content: config_json(&encoder, recipe.as_ref())?.into_bytes(),
    });
    listed.push((
        "config.json".into(),
        "architecture and pretraining recipe".into(),
    ));

    let mut report_paths = entries(out_dir, |n| n.ends_with(".json"))?;
    for p in &opts.reports {
        if !p.is_file() {
            return Err(Error::config(
                "report",
                format!("{}: no such file", p.display()),
            ));
        }
        if !report_paths.contains(p) {
            report_paths.push(p.clone());
        }
    }
    let mut reports = Vec::new();
    for p in &report_paths {
        let explicit = opts.reports.contains(p);
        match Report::read(p)? {
            Some(r) => {
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                let in_repo = format!("eval/{name}");
                if files.iter().any(|f| f.path_in_repo == in_repo) {
                    return Err(Error::config("report", format!("two reports named {name}")));
                }
                files.push(RepoFile {
                    path_in_repo: in_repo.clone(),
                    content: read(p)?,
                });
                listed.push((
                    in_repo,
                    "evaluation report the card's results come from".into(),
                ));
                reports.push(r);
            }
            None if explicit => {
                return Err(Error::format(p, "not a linear-eval or transfer report"));
            }
            None => {}
        }
    }
    for png in entries(out_dir, |n| n.ends_with(".png"))? {
        let name = png
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        files.push(RepoFile {
            path_in_repo: name.clone(),
            content: read(&png)?,
        });
        listed.push((name, "plot from the run".into()));
    }
    if opts.include_state {
        let step = |p: &PathBuf| -> Option<u64> {
            p.file_name()?
                .to_str()?
                .strip_prefix("state-")?
                .strip_suffix(".safetensors")?
                .parse()
                .ok()
        };
        let states = entries(out_dir, |n| {
            n.starts_with("state-") && n.ends_with(".safetensors")
        })?;
        let newest = states
            .iter()
            .filter_map(|p| step(p).map(|s| (s, p)))
            .max_by_key(|(s, _)| *s)
            .ok_or_else(|| {
                Error::format(out_dir, "--include-state: no state-<step>.safetensors here")
            })?;
        files.push(RepoFile {
            path_in_repo: "training_state.safetensors".into(),
            content: read(newest.1)?,
        });
        listed.push((
            "training_state.safetensors".into(),
            format!(
                "full training state at step {} (resume with byol-pretrain)",
                newest.0
            ),
        ));
    }
    let info = CardInfo {
        repo: opts.repo.clone(),
        license: opts.license.clone(),
        datasets: opts.datasets.clone(),
        encoder,
        recipe,
        files: listed,
    };
    files.push(RepoFile {
        path_in_repo: "README.md".into(),
        content: model_card(&info, &reports)?.into_bytes(),
    });
    Ok(files)
}

/// Checks a repository to publish to (`owner/name` by the Hub's rules, see
/// [`check_repo_id`]) and a branch, without the network: for flags checked before a run starts.
pub fn check_publish_target(repo: &str, revision: Option<&str>) -> Result<()> {
    check_repo_id(repo).map_err(|why| Error::config("repo", why))?;
    if !repo.contains('/') {
        return Err(Error::config(
            "repo",
            format!("`{repo}` has no owner: publish to `owner/name`"),
        ));
    }
    if let Some(r) = revision {
        check_revision(r).map_err(|why| Error::config("revision", why))?;
    }
    Ok(())
}

/// Creates `opts.repo` if needed and uploads [`prepare`]'s files in one commit.
pub fn publish(out_dir: &Path, opts: &PublishOptions, hub: &HubOptions) -> Result<Published> {
    check_publish_target(&opts.repo, opts.revision.as_deref())?;
    let what = format!("hf://{}", opts.repo);
    let (owner, name) = opts
        .repo
        .split_once('/')
        .ok_or_else(|| Error::config("repo", format!("`{}` is not owner/name", opts.repo)))?;
    if hub.offline {
        return Err(hub.error(&what, "HF_HUB_OFFLINE is set: publishing needs the network"));
    }
    let files = prepare(out_dir, opts)?;
    let client = hub.client(&what)?;
    client
        .create_repository()
        .repo_id(&opts.repo)
        .repo_type(RepoTypeModel)
        .private(opts.private)
        .exist_ok(true)
        .send()
        .map_err(|e| {
            hub.error(
                &what,
                format!("cannot create the repository: {}", hub.describe(&e)),
            )
        })?;
    let names: Vec<String> = files.iter().map(|f| f.path_in_repo.clone()).collect();
    let ops = files
        .into_iter()
        .map(|f| CommitOperation::add_bytes(f.path_in_repo, f.content))
        .collect();
    let info = client
        .model(owner, name)
        .create_commit()
        .operations(ops)
        .commit_message(
            opts.commit_message
                .clone()
                .unwrap_or_else(|| "Upload BYOL encoder (byol-rs)".into()),
        )
        .maybe_revision(opts.revision.clone())
        .send()
        .map_err(|e| hub.error(&what, format!("upload failed: {}", hub.describe(&e))))?;
    Ok(Published {
        repo: opts.repo.clone(),
        commit: info.commit_oid,
        files: names,
    })
}
