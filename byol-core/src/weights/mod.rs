//! Weights files: what a `--weights` value names ([`reference`]), reading any supported format as
//! a state dict ([`format`]), and the encoder file, written by training and loaded by every
//! evaluation ([`encoder`]).

pub mod encoder;
pub mod format;
pub mod reference;

pub use encoder::{
    describe_architecture, load_encoder, save_encoder, save_encoder_from_store, LoadedEncoder,
};
pub use format::{detect_format, read_weights, WeightsFormat};
pub use reference::{HubRef, WeightsRef, DEFAULT_HUB_FILE};
