//! # byol-hub
//!
//! The Hugging Face Hub (or any Hub-compatible server): pulling weights named
//! `hf://<owner>/<repo>[@<revision>][/<file>]` and publishing a run directory, with the `hf-hub`
//! crate's blocking client. A crate of its own so that the library, its tests and examples do not
//! link the HTTP stack (tokio, reqwest, rustls); only the binaries use it.
//!
//! Settings follow the Hub's conventions: endpoint from `HF_ENDPOINT`, cache under
//! `HF_HUB_CACHE` or `$HF_HOME/hub`, token from `HF_TOKEN`, `HF_TOKEN_PATH` or `$HF_HOME/token`
//! (resolved by hf-hub; never printed, logged or put in an error), and `HF_HUB_OFFLINE=1` mapped
//! to hf-hub's `local_files_only` (the cache or a clear error, no network).

pub mod card;
pub mod error;
pub mod options;
pub mod publish;
pub mod pull;
pub mod reference;

pub use error::{Error, Result};
pub use options::HubOptions;
pub use publish::{check_publish_target, publish, PublishOptions, Published};
pub use pull::{download, resolve_weights};
pub use reference::{
    check_file_path, check_repo_id, check_revision, HubRef, WeightsRef, DEFAULT_HUB_FILE,
};
