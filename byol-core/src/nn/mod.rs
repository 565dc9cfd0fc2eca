//! Networks: the parameter store, layers, ResNet encoders (and their frozen inference form), the
//! BYOL MLP heads and bilinear resizing.

pub mod frozen;
pub mod layers;
pub mod mlp;
pub mod norm;
pub mod precision;
pub mod resize;
pub mod resnet;
pub mod var_store;

pub use frozen::FrozenEncoder;
pub use mlp::{Mlp, MlpConfig};
pub use norm::BatchNorm;
pub use precision::Precision;
pub(crate) use resnet::{resnet_depth_list, RESNET_DEPTHS};
pub use resnet::{Padding, ResNet, ResNetConfig, Stem};
pub use var_store::{Role, VarPath, VarStore};
