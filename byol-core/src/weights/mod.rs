//! Weights: which ones an evaluation uses ([`choice`]: a file or none, and which part of it),
//! reading any supported format ([`format`](mod@format)), where the encoders are in other
//! frameworks' checkpoints ([`layouts`]), the architecture their shapes imply ([`architecture`]),
//! what a file holds in words ([`inspect`]), and the encoder file, written by training and loaded
//! by every evaluation ([`encoder`]). `hf://` references are `byol-hub`'s.

pub mod architecture;
pub mod choice;
pub mod encoder;
pub mod format;
pub mod inspect;
pub mod layouts;

pub use architecture::{infer_architecture, ShapeHints};
pub use choice::{Part, Weights};
pub use encoder::{
    check_values, describe_architecture, load_encoder, load_encoder_part, save_encoder,
    save_encoder_from_store, LoadedEncoder,
};
pub use format::{
    detect_format, open_weights, read_encoder_weights, read_weights, EncoderWeights, OpenedWeights,
    WeightsFormat, WeightsSource,
};
pub use inspect::{inspect_weights, Inspection};
pub use layouts::{Framework, PartKind};
