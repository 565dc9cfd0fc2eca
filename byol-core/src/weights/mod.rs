//! Weights: which ones an evaluation uses ([`choice`]), reading any supported format as a
//! state dict ([`format`](mod@format)), and the encoder file, written by training and loaded by
//! every evaluation ([`encoder`]). `hf://` references are `byol-hub`'s.

pub mod choice;
pub mod encoder;
pub mod format;

pub use choice::Weights;
pub use encoder::{
    check_values, describe_architecture, load_encoder, save_encoder, save_encoder_from_store,
    LoadedEncoder,
};
pub use format::{detect_format, read_weights, WeightsFormat};
