//! Pulling a weights file from the Hub into the local cache.

use std::path::PathBuf;

use hf_hub::HFError;

use crate::reference::{HubRef, WeightsRef};
use crate::{Error, HubOptions, Result};

/// Downloads (or finds in the cache) the file `reference` names and returns its local path.
///
/// Offline ([`HubOptions::offline`]), only the cache is looked at. A 404 is explained: the
/// repository, the revision or the file is missing (two metadata calls tell which).
pub fn download(reference: &HubRef, opts: &HubOptions) -> Result<PathBuf> {
    let what = reference.to_string();
    let client = opts.client(&what)?;
    let (owner, name) = reference
        .repo
        .split_once('/')
        .ok_or_else(|| opts.error(&what, "the repository is not `owner/name`"))?;
    if !opts.offline {
        let escape = |s: &str| s.replace('%', "%25").replace('#', "%23");
        let url = format!(
            "{}/{}/resolve/{}/{}",
            opts.endpoint_display().trim_end_matches('/'),
            reference.repo,
            escape(reference.revision()).replace('/', "%2F"),
            escape(reference.file())
        );
        opts.probe(&what, &url)?;
    }
    let repo = client.model(owner, name);
    let result = repo
        .download_file()
        .filename(reference.file())
        .maybe_revision(reference.revision.clone())
        .local_files_only(opts.offline)
        .send();
    match result {
        Ok(path) => Ok(path),
        Err(HFError::LocalEntryNotFound { .. }) | Err(HFError::CacheNotEnabled) if opts.offline => {
            Err(opts.error(
                &what,
                format!(
                    "HF_HUB_OFFLINE is set and `{}` at revision `{}` is not in the cache ({}): \
                     download it once online, or unset HF_HUB_OFFLINE",
                    reference.file(),
                    reference.revision(),
                    opts.cache_dir_display().display()
                ),
            ))
        }
        Err(HFError::EntryNotFound { .. }) => {
            // The resolve call answers 404 for a missing repo, revision or file alike.
            let message = match repo.exists().send() {
                Ok(false) => opts.describe(&HFError::RepoNotFound {
                    repo_id: reference.repo.clone(),
                    context: None,
                }),
                Ok(true) => match repo.revision_exists().revision(reference.revision()).send() {
                    Ok(false) => format!(
                        "revision `{}` not found in `{}`",
                        reference.revision(),
                        reference.repo
                    ),
                    _ => format!(
                        "no file `{}` in `{}` at revision `{}`",
                        reference.file(),
                        reference.repo,
                        reference.revision()
                    ),
                },
                Err(e) => opts.describe(&e),
            };
            Err(opts.error(&what, message))
        }
        Err(e) => Err(opts.error(&what, opts.describe(&e))),
    }
}

/// A `--weights` value as a local file: a path as is (checked to exist), a Hub reference
/// downloaded with the settings of the environment.
pub fn resolve_weights(value: &str) -> Result<PathBuf> {
    match value.parse::<WeightsRef>()? {
        WeightsRef::Local(path) => {
            if !path.exists() {
                return Err(Error::config(
                    "weights",
                    format!("{}: no such file", path.display()),
                ));
            }
            // Says what else is wrong: a directory, or not a regular file (/dev/null, a FIFO).
            byol_core::io::check_regular_file(&path)
                .map_err(|e| Error::config("weights", e.to_string()))?;
            Ok(path)
        }
        WeightsRef::Hub(r) => download(&r, &HubOptions::from_env()?),
    }
}
