//! What a `--weights` value names: a local path or a Hub reference
//! `hf://<owner>/<repo>[@<revision>][/<file>]` (parsing; [`crate::pull`] downloads).

use std::path::PathBuf;

use byol_core::{Error, Result};

/// A parsed `--weights` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsRef {
    Local(PathBuf),
    Hub(HubRef),
}

/// `hf://<owner>/<repo>[@<revision>][/<file>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRef {
    /// `owner/name`.
    pub repo: String,
    /// Branch, tag or commit; `None` is `main`.
    pub revision: Option<String>,
    /// File inside the repo; `None` is `model.safetensors`.
    pub file: Option<String>,
}

/// The file a Hub reference without a file name points at.
pub const DEFAULT_HUB_FILE: &str = "model.safetensors";

impl HubRef {
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }

    pub fn file(&self) -> &str {
        self.file.as_deref().unwrap_or(DEFAULT_HUB_FILE)
    }
}

impl std::fmt::Display for HubRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "hf://{}", self.repo)?;
        if let Some(r) = &self.revision {
            write!(f, "@{r}")?;
        }
        if let Some(file) = &self.file {
            write!(f, "/{file}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for WeightsRef {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let Some(rest) = s.strip_prefix("hf://") else {
            if s.is_empty() {
                return Err(Error::config(
                    "weights",
                    "empty: give a file or hf://owner/repo",
                ));
            }
            return Ok(WeightsRef::Local(PathBuf::from(s)));
        };
        let bad = |why: &str| {
            Error::config(
                "weights",
                format!("`{s}`: {why}; expected hf://<owner>/<repo>[@<revision>][/<file>]"),
            )
        };
        let mut parts = rest.splitn(3, '/');
        let owner = parts.next().unwrap_or_default();
        let name_rev = parts.next().ok_or_else(|| bad("no repository name"))?;
        let file = parts.next().map(str::to_string);
        let (name, revision) = match name_rev.split_once('@') {
            Some((n, r)) => (n, Some(r.to_string())),
            None => (name_rev, None),
        };
        if owner.is_empty() {
            return Err(bad("no owner before the repository name"));
        }
        let repo = format!("{owner}/{name}");
        check_repo_id(&repo).map_err(|why| bad(&why))?;
        if let Some(r) = &revision {
            check_revision(r).map_err(|why| bad(&why))?;
        }
        if let Some(f) = &file {
            check_file_path(f).map_err(|why| bad(&why))?;
        }
        Ok(WeightsRef::Hub(HubRef {
            repo,
            revision,
            file,
        }))
    }
}

/// The Hub's rules for a repository id: `name` or `namespace/name`, each part of letters,
/// digits, `-`, `_`, `.`, neither starting nor ending with `-` or `.`, no `--` or `..`, at most
/// 96 characters in all. `Err` says which rule failed.
pub fn check_repo_id(id: &str) -> std::result::Result<(), String> {
    if id.len() > 96 {
        return Err(format!("repository id `{id}` is longer than 96 characters"));
    }
    let parts: Vec<&str> = id.split('/').collect();
    if parts.len() > 2 {
        return Err(format!(
            "repository id `{id}` has more than one `/` (it is `name` or `namespace/name`)"
        ));
    }
    for part in parts {
        if part.is_empty() {
            return Err(format!("repository id `{id}` has an empty part"));
        }
        if let Some(c) = part
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(format!(
                "repository id `{id}` contains {c:?}: only letters, digits, `-`, `_` and `.`"
            ));
        }
        if part.contains("--") || part.contains("..") {
            return Err(format!("repository id `{id}` contains `--` or `..`"));
        }
        if part.starts_with(['-', '.']) || part.ends_with(['-', '.']) {
            return Err(format!(
                "repository id `{id}`: a part starts or ends with `-` or `.`"
            ));
        }
    }
    Ok(())
}

/// A revision (branch, tag, commit) as git accepts it in a URL path: not empty, no `..`, no
/// spaces or control characters, none of `~^:?*[` or a backslash, no `@{`, no empty `/` component, not ending
/// in `.lock` or `.`.
pub fn check_revision(rev: &str) -> std::result::Result<(), String> {
    let bad = |why: &str| Err(format!("revision `{}`: {why}", rev.escape_debug()));
    if rev.is_empty() {
        return bad("empty");
    }
    if rev.contains("..") || rev.contains("@{") {
        return bad("contains `..` or `@{`");
    }
    if rev
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c))
    {
        return bad("contains a space, a control character or one of ~^:?*[\\");
    }
    if rev.split('/').any(|c| c.is_empty() || c.starts_with('.')) {
        return bad("has an empty component or one starting with `.`");
    }
    if rev.ends_with(".lock") || rev.ends_with('.') {
        return bad("ends with `.lock` or `.`");
    }
    Ok(())
}

/// A file path inside a repository: relative, no empty, `.` or `..` component, no backslash or
/// control character.
pub fn check_file_path(path: &str) -> std::result::Result<(), String> {
    let bad = |why: &str| Err(format!("file `{}`: {why}", path.escape_debug()));
    if path.is_empty() {
        return bad("empty");
    }
    if path.starts_with('/') {
        return bad("absolute (a path inside the repository is relative)");
    }
    if path.chars().any(|c| c.is_control() || c == '\\') {
        return bad("contains a control character or a backslash");
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return bad("has an empty, `.` or `..` component (it would climb out of the repository)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(s: &str) -> std::result::Result<HubRef, String> {
        match s.parse::<WeightsRef>() {
            Ok(WeightsRef::Hub(r)) => Ok(r),
            Ok(WeightsRef::Local(p)) => Err(format!("local {}", p.display())),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn hostile_references_are_refused_with_the_rule() {
        for (s, needle) in [
            ("hf://../../etc", "`--` or `..`"),
            ("hf://a/b@..", "revision `..`"),
            ("hf://a/b@../../x", "revision"),
            ("hf://a/b@main/../../etc/passwd", "file"),
            ("hf://a/b//x", "file"),
            ("hf://a/b@ma in", "space"),
            ("hf://a/b@main\u{7}", "control"),
            ("hf://a/b@", "empty"),
            ("hf://-a/b", "starts or ends"),
            ("hf://a./b", "starts or ends"),
            ("hf://a/b--c", "`--`"),
            ("hf://a/b c", "contains"),
            ("hf://a", "no repository name"),
            ("hf:///b", "no owner"),
        ] {
            let err = hub(s).expect_err(s);
            assert!(err.contains(needle), "{s}: {err}");
        }
        let long = format!("hf://a/{}", "x".repeat(95));
        assert!(hub(&long).unwrap_err().contains("96"));
    }

    #[test]
    fn valid_references_parse() {
        let r = hub("hf://byol-rs/resnet50.v1_x@v1.0/sub/dir/w.safetensors").unwrap();
        assert_eq!(r.repo, "byol-rs/resnet50.v1_x");
        assert_eq!(r.revision(), "v1.0");
        assert_eq!(r.file(), "sub/dir/w.safetensors");
        let r = hub("hf://a/b").unwrap();
        assert_eq!((r.revision(), r.file()), ("main", DEFAULT_HUB_FILE));
        assert!(check_repo_id("gpt2").is_ok());
        assert!(check_repo_id("a/b/c").is_err());
        assert!(check_revision("refs/pr/1").is_ok());
        assert!(check_revision("0123456789abcdef0123456789abcdef01234567").is_ok());
        assert!(check_file_path("/etc/passwd").is_err());
        assert!(check_file_path("./x").is_err());
    }
}
