//! Where and how to reach the Hub ([`HubOptions`], from the `HF_*` environment), and hf-hub's
//! errors in words.

use std::path::PathBuf;
use std::time::Duration;

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
    /// Retries of a request after a transient failure (timeout, refused connection, 429, 5xx),
    /// with exponential backoff; default [`DEFAULT_RETRIES`].
    pub retries: Option<usize>,
    /// The token (default: `HF_TOKEN`, `HF_TOKEN_PATH`, `$HF_HOME/token`, as hf-hub resolves
    /// it). Never printed: every error text is redacted with it.
    pub token: Option<String>,
    /// Connect timeout, also the shortest read timeout (default: `HF_HUB_ETAG_TIMEOUT`, else
    /// [`DEFAULT_TIMEOUT`]).
    pub etag_timeout: Option<Duration>,
    /// Read timeout: the longest wait for the next bytes of an answer (default:
    /// `HF_HUB_DOWNLOAD_TIMEOUT`, else [`DEFAULT_TIMEOUT`]).
    pub download_timeout: Option<Duration>,
}

/// huggingface_hub's defaults for `HF_HUB_ETAG_TIMEOUT` and `HF_HUB_DOWNLOAD_TIMEOUT`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Retries after the first attempt, unless [`HubOptions::retries`] says otherwise.
pub const DEFAULT_RETRIES: usize = 2;

/// A timeout variable's value: seconds, a positive finite number.
pub fn parse_timeout(var: &str, value: &str) -> Result<Duration> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            Error::config(
                var,
                format!("`{value}` is not a number of seconds > 0 (e.g. {var}=30)"),
            )
        })
}

fn timeout_from_env(var: &str) -> Result<Option<Duration>> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => parse_timeout(var, &v).map(Some),
        _ => Ok(None),
    }
}

/// The token as hf-hub resolves it: `HF_TOKEN`, the file `HF_TOKEN_PATH`, `$HF_HOME/token`;
/// none with `HF_HUB_DISABLE_IMPLICIT_TOKEN`.
fn resolve_token() -> Option<String> {
    if std::env::var("HF_HUB_DISABLE_IMPLICIT_TOKEN").is_ok_and(|v| !v.is_empty()) {
        return None;
    }
    if let Ok(t) = std::env::var("HF_TOKEN") {
        if !t.is_empty() {
            return Some(t);
        }
    }
    let read = |p: PathBuf| {
        std::fs::read_to_string(p)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    };
    if let Ok(p) = std::env::var("HF_TOKEN_PATH") {
        if let Some(t) = read(PathBuf::from(p)) {
            return Some(t);
        }
    }
    read(hf_hub::hf_home().join("token"))
}

/// `text` with the token (and anything shaped like a Hub token, `hf_` + 20 or more letters and
/// digits) replaced by `hf_***`: for every error text that came from a server.
pub fn redact(text: &str, token: Option<&str>) -> String {
    let mut out = match token.map(str::trim).filter(|t| t.len() >= 4) {
        Some(t) => text.replace(t, "hf_***"),
        None => text.to_string(),
    };
    let mut from = 0;
    while let Some(i) = out[from..].find("hf_").map(|i| i + from) {
        let tail = &out[i + 3..];
        let n = tail
            .char_indices()
            .find(|(_, c)| !c.is_ascii_alphanumeric())
            .map_or(tail.len(), |(k, _)| k);
        let preceded = out[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if n >= 20 && !preceded {
            out.replace_range(i..i + 3 + n, "hf_***");
            from = i + 6;
        } else {
            from = i + 3;
        }
    }
    out
}

impl std::fmt::Debug for HubOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubOptions")
            .field("endpoint", &self.endpoint)
            .field("cache_dir", &self.cache_dir)
            .field("offline", &self.offline)
            .field("retries", &self.retries)
            .field("token", &self.token.as_ref().map(|_| "hf_***"))
            .field("etag_timeout", &self.etag_timeout)
            .field("download_timeout", &self.download_timeout)
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
    /// Endpoint and cache from hf-hub's own environment handling, offline from `HF_HUB_OFFLINE`,
    /// timeouts from `HF_HUB_ETAG_TIMEOUT` and `HF_HUB_DOWNLOAD_TIMEOUT` (seconds; a value that
    /// is not a positive number is an error naming the variable).
    pub fn from_env() -> Result<Self> {
        Ok(Self {
            offline: std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| truthy(&v)),
            etag_timeout: timeout_from_env("HF_HUB_ETAG_TIMEOUT")?,
            download_timeout: timeout_from_env("HF_HUB_DOWNLOAD_TIMEOUT")?,
            ..Self::default()
        })
    }

    /// The token in effect: [`HubOptions::token`] or the environment's.
    pub fn token_in_effect(&self) -> Option<String> {
        self.token.clone().or_else(resolve_token)
    }

    /// Connect and read timeouts in effect.
    pub fn timeouts(&self) -> (Duration, Duration) {
        let connect = self.etag_timeout.unwrap_or(DEFAULT_TIMEOUT);
        let read = self
            .download_timeout
            .unwrap_or(DEFAULT_TIMEOUT)
            .max(connect);
        (connect, read)
    }

    /// A Hub error about `what`, its message redacted (no token in it).
    pub(crate) fn error(&self, what: &str, message: impl AsRef<str>) -> Error {
        let token = self.token_in_effect();
        Error::hub(
            redact(what, token.as_deref()),
            redact(message.as_ref(), token.as_deref()),
        )
    }

    /// [`describe`] with this endpoint, token state and timeouts.
    pub(crate) fn describe(&self, e: &HFError) -> String {
        let token = self.token_in_effect();
        redact(
            &describe(
                e,
                &self.endpoint_display(),
                token.is_some(),
                self.timeouts(),
            ),
            token.as_deref(),
        )
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

    /// The HTTP client with this session's timeouts (no token, no redirects followed).
    fn http(&self) -> std::result::Result<reqwest::Client, reqwest::Error> {
        let (connect, read) = self.timeouts();
        reqwest::Client::builder()
            .user_agent(concat!("hf-hub/1.0.0; byol-rs/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(connect)
            .read_timeout(read)
            .build()
    }

    /// A HEAD request to `url` (no token sent) with the timeouts and retries, before hf-hub's
    /// own metadata request, which has no timeout at all: a server that accepts and never
    /// answers is an error naming the endpoint here instead of a hang. Any answer, whatever its
    /// status, passes (hf-hub then reports it in words); failures other than timeouts are left
    /// to hf-hub's messages too.
    pub(crate) fn probe(&self, what: &str, url: &str) -> Result<()> {
        let http = self
            .http()
            .map_err(|e| self.error(what, format!("cannot set up the HTTP client: {e}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| self.error(what, format!("cannot start the HTTP runtime: {e}")))?;
        let attempts = self.retries.unwrap_or(DEFAULT_RETRIES) + 1;
        for attempt in 0..attempts {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(200 << attempt.min(6)));
            }
            match runtime.block_on(async { http.head(url).send().await }) {
                Ok(_) => return Ok(()),
                Err(e) if e.is_timeout() => {
                    tracing::debug!("{url}: no answer (attempt {}/{attempts})", attempt + 1)
                }
                Err(_) => return Ok(()),
            }
        }
        let (connect, read) = self.timeouts();
        Err(self.error(
            what,
            format!(
                "no answer from {} within {}s (connect) / {}s (read), {attempts} attempts: the \
                 server is down or overloaded; HF_HUB_ETAG_TIMEOUT and HF_HUB_DOWNLOAD_TIMEOUT \
                 (seconds) allow longer",
                self.endpoint_display(),
                connect.as_secs_f64(),
                read.as_secs_f64()
            ),
        ))
    }

    /// The client: connect and read timeouts (no request waits forever on a silent server),
    /// bounded retries with exponential backoff, the token resolved here (so errors can be
    /// redacted with it).
    pub(crate) fn client(&self, what: &str) -> Result<HFClientSync> {
        let http = self
            .http()
            .map_err(|e| self.error(what, format!("cannot set up the HTTP client: {e}")))?;
        let mut b = HFClientBuilder::new()
            .client(http)
            .retry_max_attempts(self.retries.unwrap_or(DEFAULT_RETRIES))
            .retry_base_delay(Duration::from_millis(200));
        if let Some(e) = &self.endpoint {
            b = b.endpoint(e.trim_end_matches('/'));
        }
        if let Some(c) = &self.cache_dir {
            b = b.cache_dir(c);
        }
        if let Some(t) = self.token_in_effect() {
            b = b.token(t);
        }
        b.build_sync()
            .map_err(|e| self.error(what, format!("cannot set up the Hub client: {e}")))
    }
}

/// A readable message for an hf-hub error (callers redact it: a server may reflect the token
/// in its error message).
fn describe(
    e: &HFError,
    endpoint: &str,
    has_token: bool,
    (connect, read): (Duration, Duration),
) -> String {
    match e {
        HFError::AuthRequired { .. } if has_token => format!(
            "the token was rejected by {endpoint} (401): check HF_TOKEN, HF_TOKEN_PATH or \
             $HF_HOME/token (expired, revoked, or for another endpoint?)"
        ),
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
        HFError::Request { source, .. } if source.is_timeout() => format!(
            "no answer from {endpoint} within {}s (connect) / {}s (read), retries included: \
             the server is down or overloaded; HF_HUB_ETAG_TIMEOUT and HF_HUB_DOWNLOAD_TIMEOUT \
             (seconds) allow longer",
            connect.as_secs_f64(),
            read.as_secs_f64()
        ),
        HFError::Request { .. } => format!("cannot reach {endpoint}: {e}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_replaces_the_token_and_token_shaped_words() {
        let t = "s3cret-Value_42";
        assert_eq!(
            redact("server says: bad s3cret-Value_42!", Some(t)),
            "server says: bad hf_***!"
        );
        assert_eq!(
            redact("Bearer hf_abcdefghijklmnopqrstuvwxyz0123 x", None),
            "Bearer hf_*** x"
        );
        // Short hf_ words and identifiers containing hf_ are left alone.
        assert_eq!(
            redact("hf_hub and my_hf_abcdefghijklmnopqrstuvw", None),
            "hf_hub and my_hf_abcdefghijklmnopqrstuvw"
        );
        assert_eq!(redact("no token here", None), "no token here");
    }

    #[test]
    fn timeouts_parse_as_seconds_and_name_the_variable() {
        assert_eq!(
            parse_timeout("HF_HUB_DOWNLOAD_TIMEOUT", "1").unwrap(),
            Duration::from_secs(1)
        );
        assert_eq!(
            parse_timeout("HF_HUB_ETAG_TIMEOUT", " 2.5 ").unwrap(),
            Duration::from_millis(2500)
        );
        for bad in ["0", "-1", "ten", "inf", "NaN"] {
            let e = parse_timeout("HF_HUB_ETAG_TIMEOUT", bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("HF_HUB_ETAG_TIMEOUT") && e.contains(bad), "{e}");
        }
        let o = HubOptions {
            etag_timeout: Some(Duration::from_secs(3)),
            download_timeout: Some(Duration::from_secs(1)),
            ..HubOptions::default()
        };
        assert_eq!(
            o.timeouts(),
            (Duration::from_secs(3), Duration::from_secs(3))
        );
        assert_eq!(
            HubOptions::default().timeouts(),
            (DEFAULT_TIMEOUT, DEFAULT_TIMEOUT)
        );
    }
}
