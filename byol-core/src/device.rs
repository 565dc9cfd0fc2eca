//! Device selection: `cpu` or `cuda[:N]`.

use candle_core::Device;

use crate::{Error, Result};

/// Parses a device flag. `cuda` needs the crate's `cuda` feature; without it the error says so.
pub fn parse_device(spec: &str) -> Result<Device> {
    let bad = |msg: String| Error::config("device", msg);
    match spec {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .map_err(|_| bad(format!("`{s}`: expected cuda:<index>, e.g. cuda:0")))?,
                None => 0,
            };
            if !candle_core::utils::cuda_is_available() {
                return Err(bad(format!(
                    "`{s}`: this build has no CUDA support (rebuild with `--features cuda`)"
                )));
            }
            Device::new_cuda(ordinal).map_err(|e| bad(format!("`{s}`: {e}")))
        }
        s => Err(bad(format!("`{s}`: use `cpu`, `cuda` or `cuda:<index>`"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_rejects_nonsense() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        let err = parse_device("tpu").unwrap_err().to_string();
        assert!(err.contains("device") && err.contains("tpu"), "{err}");
        let err = parse_device("cuda:x").unwrap_err().to_string();
        assert!(err.contains("cuda:<index>"), "{err}");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_get_it() {
        let err = parse_device("cuda:0").unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
}
