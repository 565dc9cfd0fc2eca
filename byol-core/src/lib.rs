//! # byol-core
//!
//! BYOL (Bootstrap Your Own Latent, Grill et al. 2020) on candle: ResNet encoders with torchvision
//! tensor names, projector and predictor, the normalised regression loss, the EMA target with its
//! cosine schedule, LARS with the warm-up + cosine schedule, datasets and augmentations,
//! safetensors checkpoints, evaluation and transfer (VOC, segmentation, the classification suite).

pub mod allocator;
pub mod byol;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
pub mod distributed;
pub mod error;
pub mod eval;
pub mod import;
pub mod io;
pub mod logging;
pub mod metrics_log;
pub mod nn;
pub mod optim;
pub mod plot;
pub mod signals;
pub mod threads;
pub mod time_budget;
pub mod train;
pub mod transfer;
pub mod weights;

pub use error::{Error, Result};
