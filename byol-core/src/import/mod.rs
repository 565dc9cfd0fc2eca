//! Import of weights written by other frameworks without running their code.

pub mod deepmind;
pub mod pickle;
pub mod torch_file;
