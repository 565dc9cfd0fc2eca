//! Named parameters and buffers of a network, in torchvision naming.
//!
//! candle-nn's `VarMap` keeps BatchNorm running statistics as `Var`s beside the trainable weights
//! and records nothing about what each tensor is. BYOL needs that distinction in three places: the
//! optimiser (only trainable tensors), LARS (biases and BatchNorm parameters are excluded from
//! weight decay and trust-ratio adaptation) and the EMA target (parameters only, never running
//! statistics). So every entry here carries its [`Role`].

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{Error, Result};

/// What a named tensor is, which decides how training treats it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Convolution or linear weight: trained, decayed and LARS-adapted.
    Weight,
    /// Linear bias: trained, not decayed nor adapted.
    Bias,
    /// BatchNorm scale (γ): trained, not decayed nor adapted.
    NormScale,
    /// BatchNorm shift (β): trained, not decayed nor adapted.
    NormShift,
    /// BatchNorm running mean: a buffer updated by training-mode forward passes.
    RunningMean,
    /// BatchNorm running variance: a buffer.
    RunningVar,
    /// PyTorch's `num_batches_tracked` (i64 scalar): a buffer.
    BatchesTracked,
}

impl Role {
    /// True for tensors the optimiser updates (and the EMA averages).
    pub fn is_trainable(self) -> bool {
        matches!(
            self,
            Role::Weight | Role::Bias | Role::NormScale | Role::NormShift
        )
    }

    /// True for tensors that receive weight decay and the LARS trust ratio.
    pub fn is_lars_adapted(self) -> bool {
        self == Role::Weight
    }

    /// True for tensors that receive weight decay (LARS and SGD): weights, not biases nor
    /// BatchNorm parameters.
    pub fn is_decayed(self) -> bool {
        self == Role::Weight
    }
}

/// One named tensor of a network.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub var: Var,
    pub role: Role,
}

/// The tensors of one network, in creation order, with a seeded initialiser.
pub struct VarStore {
    entries: Vec<Entry>,
    index: HashMap<String, usize>,
    device: Device,
    rng: ChaCha8Rng,
}

impl VarStore {
    /// An empty store whose random initialisation is drawn from `seed` (on the host, so the
    /// same seed gives the same weights on every device).
    pub fn new(device: &Device, seed: u64) -> Self {
        Self {
            entries: Vec::new(),
            index: HashMap::new(),
            device: device.clone(),
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The root path, to build a network under.
    pub fn root(&mut self) -> VarPath<'_> {
        VarPath {
            store: self,
            prefix: String::new(),
        }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.index.get(name).map(|&i| &self.entries[i])
    }

    /// The trainable entries, in creation order.
    pub fn trainable(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.role.is_trainable())
    }

    /// The trainable entries that have a gradient in `grads` (what an optimiser steps).
    pub fn with_grads<'a>(
        &'a self,
        grads: &'a candle_core::backprop::GradStore,
    ) -> impl Iterator<Item = (&'a Entry, &'a Tensor)> {
        self.trainable()
            .filter_map(|e| grads.get(e.var.as_tensor()).map(|g| (e, g)))
    }

    /// Number of trainable scalars.
    pub fn num_trainable(&self) -> usize {
        self.trainable().map(|e| e.var.elem_count()).sum()
    }

    /// Every tensor whose name starts with `prefix`, the prefix stripped, as (name, tensor).
    pub fn tensors_under(&self, prefix: &str) -> Vec<(String, Tensor)> {
        self.entries
            .iter()
            .filter_map(|e| {
                e.name
                    .strip_prefix(prefix)
                    .map(|n| (n.to_string(), e.var.as_tensor().clone()))
            })
            .collect()
    }

    /// Copies `tensors` into the entries under `prefix`. Every entry under the prefix must be
    /// present with the same shape; extra tensors are an error unless `allow_extra` (a torchvision
    /// state dict carries `fc.*`, which an encoder has no use for). The first mismatch is reported
    /// by tensor name.
    pub fn load_under(
        &self,
        prefix: &str,
        tensors: &HashMap<String, Tensor>,
        allow_extra: bool,
    ) -> Result<()> {
        let mut expected = 0usize;
        for entry in &self.entries {
            let Some(short) = entry.name.strip_prefix(prefix) else {
                continue;
            };
            let Some(src) = tensors.get(short) else {
                // Exporters that drop PyTorch's batch counter still give a complete model.
                if entry.role == Role::BatchesTracked {
                    continue;
                }
                return Err(Error::tensor(short, "missing from the weights file"));
            };
            expected += 1;
            if src.dims() != entry.var.dims() {
                return Err(Error::tensor(
                    short,
                    format!(
                        "shape {:?} in the file, the model expects {:?}",
                        src.dims(),
                        entry.var.dims()
                    ),
                ));
            }
            let src = src.to_device(&self.device)?.to_dtype(entry.var.dtype())?;
            entry.var.set(&src)?;
        }
        if !allow_extra && tensors.len() != expected {
            let mut extra: Vec<&String> = tensors
                .keys()
                .filter(|k| !self.index.contains_key(&format!("{prefix}{k}")))
                .collect();
            extra.sort();
            if let Some(name) = extra.first() {
                return Err(Error::tensor(
                    name.as_str(),
                    "present in the weights file but not in the model",
                ));
            }
        }
        Ok(())
    }

    fn add(&mut self, name: String, tensor: Tensor, role: Role) -> Result<Var> {
        if self.index.contains_key(&name) {
            return Err(Error::tensor(name, "created twice in the same network"));
        }
        let var = Var::from_tensor(&tensor)?;
        self.index.insert(name.clone(), self.entries.len());
        self.entries.push(Entry {
            name,
            var: var.clone(),
            role,
        });
        Ok(var)
    }

    /// Standard normal samples by Box–Muller, from the store's own generator.
    fn normal(&mut self, n: usize, std: f64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let u1: f64 = 1.0 - self.rng.random::<f64>();
                let u2: f64 = self.rng.random::<f64>();
                (std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
            })
            .collect()
    }

    fn uniform(&mut self, n: usize, bound: f64) -> Vec<f32> {
        (0..n)
            .map(|_| (self.rng.random_range(-bound..bound)) as f32)
            .collect()
    }
}

/// A position in a [`VarStore`]: the dotted prefix under which new tensors are named.
pub struct VarPath<'a> {
    store: &'a mut VarStore,
    prefix: String,
}

impl VarPath<'_> {
    /// The sub-path `prefix.name`.
    pub fn pp(&mut self, name: impl std::fmt::Display) -> VarPath<'_> {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        };
        VarPath {
            store: self.store,
            prefix,
        }
    }

    fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    fn tensor(&self, data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
        Ok(Tensor::from_vec(data, shape, &self.store.device)?)
    }

    /// A tensor of normal samples with standard deviation `std`.
    pub fn normal(&mut self, name: &str, shape: &[usize], std: f64, role: Role) -> Result<Var> {
        let data = self.store.normal(shape.iter().product(), std);
        let t = self.tensor(data, shape)?;
        self.store.add(self.full_name(name), t, role)
    }

    /// A tensor of samples uniform in (−bound, bound).
    pub fn uniform(&mut self, name: &str, shape: &[usize], bound: f64, role: Role) -> Result<Var> {
        let data = self.store.uniform(shape.iter().product(), bound);
        let t = self.tensor(data, shape)?;
        self.store.add(self.full_name(name), t, role)
    }

    /// A tensor filled with `value`.
    pub fn constant(&mut self, name: &str, shape: &[usize], value: f32, role: Role) -> Result<Var> {
        let t = self.tensor(vec![value; shape.iter().product()], shape)?;
        self.store.add(self.full_name(name), t, role)
    }

    /// The i64 scalar counter PyTorch keeps beside BatchNorm statistics.
    pub fn counter(&mut self, name: &str) -> Result<Var> {
        let t = Tensor::zeros((), DType::I64, &self.store.device)?;
        self.store
            .add(self.full_name(name), t, Role::BatchesTracked)
    }
}
