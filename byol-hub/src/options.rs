//! Where and how to reach the Hub ([`HubOptions`], from the `HF_*` environment), and hf-hub's
//! errors in words.

use std::path::PathBuf;

use hf_hub::{HFClientBuilder, HFClientSync, HFError};

use crate::{Error, Result};

/// Where and how to reach the Hub. [`HubOptions::from_env`] reads the `HF_*` variables; fields
/// set here override them.
#[derive(Clone, Default)]
pub struct HubOptions {
    /// Base URL (default: `HF_ENDPOINT`, else huggingface.co).
    pub endpoint: Option<String>,
    /// Cache directory (default: `HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub cache_dir: Option<PathBuf>,
    /// Only the local cache, no network (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Network attempts per request (hf-hub retries transient failures).
    pub retries: Option<usize>,
}

impl std::fmt::Debug for HubOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubOptions")
            .field("endpoint", &self.endpoint)
            .field("cache_dir", &self.cache_dir)
            .field("offline", &self.offline)
            .finish()
    }
}

/// `HF_HUB_OFFLINE` truthy values, as huggingface_hub reads them.
fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

impl HubOptions {
    /// Endpoint and cache from hf-hub's own environment handling, offline from `HF_HUB_OFFLINE`.
    pub fn from_env() -> Self {
        Self {
            offline: std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| truthy(&v)),
            ..Self::default()
        }
    }

    /// The endpoint in effect (for messages).
    pub fn endpoint_display(&self) -> String {
        self.endpoint
            .clone()
            .or_else(|| std::env::var("HF_ENDPOINT").ok())
            .unwrap_or_else(|| "https://huggingface.co".into())
    }

    /// The cache directory in effect.
    pub fn cache_dir_display(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(hf_hub::resolve_cache_dir)
    }

    pub(crate) fn client(&self, what: &str) -> Result<HFClientSync> {
        let mut b = HFClientBuilder::new();
        if let Some(e) = &self.endpoint {
            b = b.endpoint(e.trim_end_matches('/'));
        }
        if let Some(c) = &self.cache_dir {
            b = b.cache_dir(c);
        }
        if let Some(n) = self.retries {
            b = b.retry_max_attempts(n.max(1));
        }
        b.build_sync()
            .map_err(|e| Error::hub(what, format!("cannot set up the Hub client: {e}")))
    }
}

/// A readable message for an hf-hub error; the token is never part of it (hf-hub does not put
/// request headers in its errors).
pub(crate) fn describe(e: &HFError, endpoint: &str) -> String {
    match e {
        HFError::AuthRequired { .. } => format!(
            "authentication required by {endpoint}: set HF_TOKEN, or write the token to $HF_HOME/token"
        ),
        HFError::Forbidden { .. } => {
            format!("the token in use may not do this on {endpoint} (forbidden)")
        }
        HFError::RepoNotFound { repo_id, .. } => {
            format!("repository `{repo_id}` not found on {endpoint} (or private without a token)")
        }
        HFError::RevisionNotFound {
            repo_id, revision, ..
        } => format!("revision `{revision}` not found in `{repo_id}`"),
        HFError::EntryNotFound { path, repo_id, .. } => {
            format!("no file `{path}` in `{repo_id}`")
        }
        HFError::Request { .. } => format!("cannot reach {endpoint}: {e}"),
        other => other.to_string(),
    }
}
