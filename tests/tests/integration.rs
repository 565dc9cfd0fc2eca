//! The workspace integration tests, one module per concern, linked into one test binary: each
//! binary links candle and the whole library, and one link instead of eighteen keeps CI's time
//! and disk down. `hub.rs` stays its own binary because it sets `HF_*` process environment.

mod blocked_layout;
mod checkpoints;
mod data_loader;
mod data_parallel;
mod data_readers;
mod device_step;
mod eval_knn;
mod eval_logistic;
mod eval_metrics;
mod eval_svm;
mod frozen_encoder;
mod hostile_input;
mod hub_olah;
mod kernels_ops;
mod linear_eval;
mod pretrain_resume;
mod pytorch_parity;
mod recipe_formulas;
mod semi_supervised;
mod transfer_classify;
mod transfer_seg;
mod transfer_voc;
mod weights_frameworks;
mod weights_import;
