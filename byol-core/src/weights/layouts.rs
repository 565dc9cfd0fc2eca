//! Where the encoders are in the checkpoints of other frameworks, and which framework wrote a
//! file, from its tensor names (dotted paths from the saved object's root) and shapes alone.
//!
//! A ResNet is found wherever its tensors sit under one prefix in torchvision naming
//! (`<p>conv1.weight`, `<p>layer1.0.conv1.weight`, …) or as lightly's
//! `nn.Sequential(*list(resnet.children())[:-1])` (`<p>0.weight` = conv1, `<p>1.*` = bn1,
//! `<p>4.*`..`<p>7.*` = layer1..layer4). Then, with `r` the state-dict root (`` or
//! `state_dict.`), the layouts recognised (each checked against its source):
//!
//! | framework | online | target | heads |
//! |---|---|---|---|
//! | solo-learn ≥ 2021-12 (solo/methods/base.py, byol.py) | `r backbone.` | `r momentum_backbone.` | `projector.`, `momentum_projector.`, `predictor.`, `classifier.`, `momentum_classifier.` |
//! | solo-learn < 2021-12 | `r encoder.` | `r momentum_encoder.` | as above |
//! | mmselfsup 0.x / OpenSelfSup (algorithms/byol.py, branch 0.x) | `r online_net.0.` (alias `backbone.`) | `r target_net.0.` | `online_net.1.` (alias `neck.`), `target_net.1.`, `head.predictor.` |
//! | mmselfsup 1.x / mmpretrain (BYOL + mmengine BaseAveragedModel) | `r backbone.` | `r target_net.module.0.` | `neck.`, `target_net.module.1.`, `head.predictor.` |
//! | lightly examples (`nn.Sequential` of the children) | `r backbone.` | `r backbone_momentum.` / `r momentum_backbone.` | `projection_head.`, `prediction_head.`, `projection_head_momentum.` / `momentum_projection_head.` |
//! | lightly benchmarks (torchvision resnet) | `r backbone.` | `r teacher_backbone.` | `projection_head.`, `prediction_head.`, `teacher_projection_head.`, `online_classifier.` |
//! | VISSL (log_hooks.py, base_ssl_model.py, trunks/resnext.py, losses/byol_loss.py) | `classy_state_dict.base_model.model.trunk._feature_blocks.` | `loss.target_network.trunk._feature_blocks.` | `…model.heads.0.`, `…model.heads.1.`, `loss.target_network.heads.` |
//!
//! Anything else with ResNets is taken generically: an encoder whose path has a `momentum`,
//! `target`, `teacher` or `ema` component is a target, any other an online one (PyTorch
//! Lightning modules holding a torchvision ResNet as `model.`/`encoder.`/`backbone.`, plain
//! torchvision/timm state dicts, nested or not, with DDP's `module.`). The same tensors saved
//! under two names (mmselfsup's aliases) are one encoder. lightly's `ResNetGenerator` backbones
//! are recognised and refused: their `nn.Sequential` drops the stem ReLU, which no torchvision
//! ResNet (and none of ours) does.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::nn::{Padding, Stem};
use crate::weights::architecture::ShapeHints;
use crate::weights::choice::Part;

/// One tensor of a file as the layout detection sees it.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    pub shape: Vec<usize>,
    /// Equal for the same tensor saved under two names (`None`: unknown).
    pub identity: Option<String>,
}

/// The program that wrote a checkpoint, as recognised from its layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framework {
    /// Our encoder file (torchvision names, architecture in the metadata).
    ByolRs,
    /// Our training state (`online.*`, `target.*`, model config in the metadata).
    ByolRsState,
    /// A plain state dict with torchvision names (torchvision, timm, ours without metadata),
    /// possibly nested under `state_dict`/`model` and with DDP's `module.`.
    Torchvision,
    /// The official DeepMind BYOL checkpoints (Haiku pickles).
    DeepMind,
    SoloLearn,
    MmSelfSup0,
    MmSelfSup1,
    Lightly,
    Vissl,
    /// A PyTorch Lightning checkpoint of a module holding a torchvision ResNet.
    Lightning,
    /// ResNets somewhere else in a state dict.
    Other,
}

impl Framework {
    pub fn describe(self) -> &'static str {
        match self {
            Framework::ByolRs => "byol-rs encoder",
            Framework::ByolRsState => "byol-rs training state",
            Framework::Torchvision => "torchvision/timm state dict",
            Framework::DeepMind => "DeepMind BYOL (Haiku) checkpoint",
            Framework::SoloLearn => "solo-learn (PyTorch Lightning) checkpoint",
            Framework::MmSelfSup0 => "mmselfsup 0.x / OpenSelfSup checkpoint",
            Framework::MmSelfSup1 => "mmselfsup 1.x / mmpretrain checkpoint",
            Framework::Lightly => "lightly checkpoint",
            Framework::Vissl => "VISSL checkpoint",
            Framework::Lightning => "PyTorch Lightning checkpoint",
            Framework::Other => "state dict with ResNet tensors",
        }
    }

    /// What the framework's 3×3 stems are (its CIFAR ResNets).
    pub fn shape_hints(self) -> ShapeHints {
        let small_stem = match self {
            // solo/methods/base.py: Conv2d(3, 64, kernel_size=3, stride=1, padding=2), no max-pool.
            Framework::SoloLearn => Some(Stem::SmallPadded),
            // mmcls/mmpretrain ResNet_CIFAR: 3×3, stride 1, padding 1, no max-pool.
            Framework::MmSelfSup0 | Framework::MmSelfSup1 => Some(Stem::Small),
            _ => None,
        };
        ShapeHints {
            small_stem,
            padding: Padding::Torch,
        }
    }
}

/// How an encoder's tensors are named under its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `conv1.weight`, `layer1.0.bn1.running_mean`, …
    Torchvision,
    /// `0.weight` (conv1), `1.*` (bn1), `4.*`..`7.*` (layer1..layer4), `9.*` (fc).
    Sequential,
    /// Every tensor under the prefix as it is, less DDP's `module.`: a state dict in which no
    /// ResNet was recognised, handed on whole so the architecture's check names what is missing.
    AsIs,
}

/// An encoder found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderAt {
    /// Its tensors' common prefix (with the trailing dot, or empty).
    pub prefix: String,
    pub scheme: Scheme,
    /// Other prefixes holding the same tensors.
    pub aliases: Vec<String>,
}

impl EncoderAt {
    /// The torchvision name of `name` if it is one of this encoder's tensors.
    pub fn torchvision_name(&self, name: &str) -> Option<String> {
        let rest = name.strip_prefix(&self.prefix)?;
        if self.scheme == Scheme::AsIs {
            return Some(rest.strip_prefix("module.").unwrap_or(rest).to_string());
        }
        let (first, tail) = rest.split_once('.')?;
        let module = match self.scheme {
            Scheme::Torchvision => match first {
                "conv1" | "bn1" | "layer1" | "layer2" | "layer3" | "layer4" | "fc" => first,
                _ => return None,
            },
            Scheme::AsIs => first,
            Scheme::Sequential => match first {
                "0" => "conv1",
                "1" => "bn1",
                "4" => "layer1",
                "5" => "layer2",
                "6" => "layer3",
                "7" => "layer4",
                "9" => "fc",
                _ => return None,
            },
        };
        Some(format!("{module}.{tail}"))
    }

    fn describe(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Torchvision => "",
            Scheme::AsIs => " (no ResNet recognised)",
            Scheme::Sequential => " (nn.Sequential of a torchvision resnet's children)",
        };
        let mut s = format!("`{}`{scheme}", self.prefix);
        if !self.aliases.is_empty() {
            let aliases: Vec<String> = self.aliases.iter().map(|a| format!("`{a}`")).collect();
            s += &format!(", the same tensors as {}", aliases.join(", "));
        }
        s
    }
}

/// A part of a BYOL checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PartKind {
    Online,
    Target,
    Projector,
    TargetProjector,
    Predictor,
    /// A copy of the predictor in the target network, which BYOL never uses (VISSL builds one).
    TargetPredictor,
    Classifier,
    TargetClassifier,
}

impl PartKind {
    pub fn describe(self) -> &'static str {
        match self {
            PartKind::Online => "online encoder",
            PartKind::Target => "target encoder",
            PartKind::Projector => "projector",
            PartKind::TargetProjector => "target projector",
            PartKind::Predictor => "predictor",
            PartKind::TargetPredictor => "target predictor (unused)",
            PartKind::Classifier => "classifier",
            PartKind::TargetClassifier => "target classifier",
        }
    }
}

/// A part found in a file: which, where, how many tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartFound {
    pub kind: PartKind,
    pub prefix: String,
    pub tensors: usize,
    /// Other prefixes holding the same tensors (a module registered twice).
    pub aliases: Vec<String>,
}

/// A file's layout: its framework, its encoders and the other parts.
#[derive(Debug, Clone)]
pub struct Layout {
    pub framework: Framework,
    /// Online encoder candidates (one, unless the file is ambiguous).
    pub online: Vec<EncoderAt>,
    /// Target encoder candidates.
    pub target: Vec<EncoderAt>,
    /// Every part with its tensor count (encoders without their `fc`).
    pub parts: Vec<PartFound>,
    /// Tensors that belong to no part, counted by their first path component.
    pub other: BTreeMap<String, usize>,
    /// ResNet-like tensors we recognise but do not read, and why.
    pub unsupported: Vec<String>,
}

impl Layout {
    /// The encoder of `part`, or why there is none.
    pub fn encoder(&self, part: Part) -> std::result::Result<&EncoderAt, String> {
        let (found, what) = match part {
            Part::Online => (&self.online, "online encoder"),
            Part::Target => (&self.target, "target (momentum) encoder"),
        };
        match found.as_slice() {
            [one] => Ok(one),
            [] => {
                let mut msg = format!("no {what} found ({})", self.framework.describe());
                if part == Part::Target && !self.online.is_empty() {
                    msg += "; the file holds only an online encoder: leave out --part target";
                }
                if let Some(u) = self.unsupported.first() {
                    msg += &format!("; {u}");
                }
                Err(msg)
            }
            many => {
                let list: Vec<String> = many.iter().map(EncoderAt::describe).collect();
                Err(format!(
                    "ambiguous: several ResNets could be the {what}: {}",
                    list.join("; ")
                ))
            }
        }
    }
}

/// The state-dict roots frameworks save under.
const ROOTS: [&str; 2] = ["", "state_dict."];

/// The path components that mark a target (momentum) network.
fn is_target_path(prefix: &str) -> bool {
    prefix
        .split(['.', '_'])
        .any(|c| matches!(c, "momentum" | "target" | "teacher" | "ema"))
}

/// Finds the encoders and parts of a file's tensors. `top_keys` are the saved object's top-level
/// keys (a Lightning checkpoint says so there).
pub fn detect(tensors: &BTreeMap<String, TensorEntry>, top_keys: &[String]) -> Layout {
    let (encoders, unsupported) = find_encoders(tensors);
    // The encoder at `p`, named by `p` (its other names as aliases).
    let has = |p: &str| -> Option<EncoderAt> {
        let e = encoders
            .iter()
            .find(|e| e.prefix == p || e.aliases.iter().any(|a| a == p))?;
        let mut aliases: Vec<String> = std::iter::once(&e.prefix)
            .chain(&e.aliases)
            .filter(|a| *a != p)
            .cloned()
            .collect();
        aliases.sort();
        Some(EncoderAt {
            prefix: p.to_string(),
            scheme: e.scheme,
            aliases,
        })
    };
    let seq = |p: &str| has(p).filter(|e| e.scheme == Scheme::Sequential);
    let tv = |p: &str| has(p).filter(|e| e.scheme == Scheme::Torchvision);
    let exists = |name: &str| tensors.contains_key(name);
    let under = |p: &str| {
        tensors
            .range(p.to_string()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(p))
    };

    // (framework, online, target, heads)
    type Heads = Vec<(PartKind, String)>;
    let mut chosen: Option<(Framework, Vec<EncoderAt>, Vec<EncoderAt>, Heads)> = None;
    let one = |e: Option<EncoderAt>| e.into_iter().collect::<Vec<_>>();

    // VISSL: the trunk of the task's base model, the loss's target network.
    if let Some(online) = tv("classy_state_dict.base_model.model.trunk._feature_blocks.") {
        let target = encoders
            .iter()
            .filter(|e| {
                std::iter::once(&e.prefix)
                    .chain(&e.aliases)
                    .any(|p| p.ends_with("target_network.trunk._feature_blocks."))
            })
            .cloned()
            .collect();
        let m = "classy_state_dict.base_model.model.heads.";
        let heads = vec![
            (PartKind::Projector, format!("{m}0.")),
            (PartKind::Predictor, format!("{m}1.")),
            (
                PartKind::TargetProjector,
                "classy_state_dict.loss.target_network.heads.0.".into(),
            ),
            (
                PartKind::TargetPredictor,
                "classy_state_dict.loss.target_network.heads.1.".into(),
            ),
            (
                PartKind::TargetProjector,
                "loss.target_network.heads.0.".into(),
            ),
            (
                PartKind::TargetPredictor,
                "loss.target_network.heads.1.".into(),
            ),
        ];
        chosen = Some((Framework::Vissl, vec![online], target, heads));
    }
    for r in ROOTS {
        if chosen.is_some() {
            break;
        }
        let p = |s: &str| format!("{r}{s}");
        let heads =
            |list: &[(PartKind, &str)]| -> Heads { list.iter().map(|(k, s)| (*k, p(s))).collect() };
        // solo-learn: `backbone`/`momentum_backbone` (`encoder`/`momentum_encoder` before
        // 2021-12), beside `projector`/`classifier`.
        for (online, target) in [
            ("backbone.", "momentum_backbone."),
            ("encoder.", "momentum_encoder."),
        ] {
            let Some(o) = tv(&p(online)) else { continue };
            let t = tv(&p(target));
            if t.is_some() || (exists(&p("classifier.weight")) && under(&p("projector."))) {
                chosen = Some((
                    Framework::SoloLearn,
                    vec![o],
                    one(t),
                    heads(&[
                        (PartKind::Projector, "projector."),
                        (PartKind::TargetProjector, "momentum_projector."),
                        (PartKind::Predictor, "predictor."),
                        (PartKind::Classifier, "classifier."),
                        (PartKind::TargetClassifier, "momentum_classifier."),
                    ]),
                ));
                break;
            }
        }
        if chosen.is_some() {
            break;
        }
        // mmselfsup 0.x: online_net = Sequential(backbone, neck), target_net likewise; the
        // online modules again as `backbone`/`neck`.
        if let Some(mut o) = tv(&p("online_net.0.")) {
            // Without tensor identities (a safetensors export) the alias is known by name.
            if tv(&p("backbone.")).is_some() && !o.aliases.contains(&p("backbone.")) {
                o.aliases.push(p("backbone."));
            }
            chosen = Some((
                Framework::MmSelfSup0,
                vec![o],
                one(tv(&p("target_net.0."))),
                heads(&[
                    (PartKind::Projector, "online_net.1."),
                    (PartKind::Projector, "neck."),
                    (PartKind::TargetProjector, "target_net.1."),
                    (PartKind::Predictor, "head.predictor."),
                ]),
            ));
            break;
        }
        // mmselfsup 1.x / mmpretrain: target_net = CosineEMA(Sequential(backbone, neck)).
        if let Some(t) = tv(&p("target_net.module.0.")) {
            chosen = Some((
                Framework::MmSelfSup1,
                one(tv(&p("backbone."))),
                vec![t],
                heads(&[
                    (PartKind::Projector, "neck."),
                    (PartKind::TargetProjector, "target_net.module.1."),
                    (PartKind::Predictor, "head.predictor."),
                ]),
            ));
            break;
        }
        // lightly: the examples' Sequential backbone, or the benchmarks' teacher_backbone.
        if let Some(o) = seq(&p("backbone.")) {
            let t = seq(&p("backbone_momentum.")).or_else(|| seq(&p("momentum_backbone.")));
            chosen = Some((
                Framework::Lightly,
                vec![o],
                one(t),
                heads(&[
                    (PartKind::Projector, "projection_head."),
                    (PartKind::Predictor, "prediction_head."),
                    (PartKind::TargetProjector, "projection_head_momentum."),
                    (PartKind::TargetProjector, "momentum_projection_head."),
                ]),
            ));
            break;
        }
        if let (Some(o), Some(t)) = (tv(&p("backbone.")), tv(&p("teacher_backbone."))) {
            chosen = Some((
                Framework::Lightly,
                vec![o],
                vec![t],
                heads(&[
                    (PartKind::Projector, "projection_head."),
                    (PartKind::Predictor, "prediction_head."),
                    (PartKind::TargetProjector, "teacher_projection_head."),
                    (PartKind::Classifier, "online_classifier."),
                ]),
            ));
            break;
        }
    }
    let (framework, online, target, heads) = chosen.unwrap_or_else(|| {
        // An encoder saved under several names is online if one of them is not a target's,
        // a target if one of them is (named by that name), possibly both.
        let named = |e: &EncoderAt, target: bool| -> Option<EncoderAt> {
            let all: Vec<&String> = std::iter::once(&e.prefix).chain(&e.aliases).collect();
            let name = all.iter().find(|p| is_target_path(p) == target)?;
            Some(EncoderAt {
                prefix: name.to_string(),
                scheme: e.scheme,
                aliases: all
                    .iter()
                    .filter(|p| *p != name)
                    .map(|p| p.to_string())
                    .collect(),
            })
        };
        let online: Vec<EncoderAt> = encoders.iter().filter_map(|e| named(e, false)).collect();
        let target: Vec<EncoderAt> = encoders.iter().filter_map(|e| named(e, true)).collect();
        let lightning = top_keys.iter().any(|k| {
            matches!(
                k.as_str(),
                "pytorch-lightning_version"
                    | "hyper_parameters"
                    | "optimizer_states"
                    | "lr_schedulers"
            )
        });
        let plain = |e: &EncoderAt| {
            let root = e.prefix.strip_suffix("module.").unwrap_or(&e.prefix);
            matches!(root, "" | "state_dict." | "model." | "model_state_dict.")
        };
        let framework = if encoders.is_empty() {
            Framework::Other
        } else if lightning {
            Framework::Lightning
        } else if online.len() == 1 && target.is_empty() && plain(&online[0]) {
            Framework::Torchvision
        } else {
            Framework::Other
        };
        (framework, online, target, Vec::new())
    });

    // Count the tensors of every part; the rest by first path component.
    let mut parts: Vec<PartFound> = Vec::new();
    let mut claimed: HashSet<&str> = HashSet::new();
    let mut count_encoder = |kind: PartKind, e: &EncoderAt, parts: &mut Vec<PartFound>| {
        let mut n = 0;
        let mut fc = 0;
        for prefix in std::iter::once(&e.prefix).chain(&e.aliases) {
            let alias = EncoderAt {
                prefix: prefix.clone(),
                ..e.clone()
            };
            for name in tensors.keys() {
                if let Some(tv) = alias.torchvision_name(name) {
                    claimed.insert(name.as_str());
                    if prefix == &e.prefix {
                        if tv.starts_with("fc.") {
                            fc += 1;
                        } else {
                            n += 1;
                        }
                    }
                }
            }
        }
        parts.push(PartFound {
            kind,
            prefix: e.prefix.clone(),
            tensors: n,
            aliases: e.aliases.clone(),
        });
        if fc > 0 {
            let kind = if kind == PartKind::Online {
                PartKind::Classifier
            } else {
                PartKind::TargetClassifier
            };
            parts.push(PartFound {
                kind,
                prefix: format!("{}fc.", e.prefix),
                tensors: fc,
                aliases: Vec::new(),
            });
        }
    };
    for e in &online {
        count_encoder(PartKind::Online, e, &mut parts);
    }
    for e in &target {
        count_encoder(PartKind::Target, e, &mut parts);
    }
    // A head's tensors by name under its prefix, with their identities: equal for a module
    // saved twice (mmselfsup's `neck`, VISSL's two copies of the loss).
    let identities = |prefix: &str| -> Option<Vec<(String, String)>> {
        tensors
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, t)| Some((k[prefix.len()..].to_string(), t.identity.clone()?)))
            .collect()
    };
    let mut seen: Vec<(usize, Vec<(String, String)>)> = Vec::new();
    for (kind, prefix) in &heads {
        let names: Vec<&String> = tensors
            .keys()
            .filter(|k| k.starts_with(prefix.as_str()) && !claimed.contains(k.as_str()))
            .collect();
        if names.is_empty() {
            continue;
        }
        claimed.extend(names.iter().map(|k| k.as_str()));
        let ids = identities(prefix).filter(|ids| !ids.is_empty());
        if let Some(ids) = &ids {
            if let Some((i, _)) = seen.iter().find(|(_, other)| other == ids) {
                parts[*i].aliases.push(prefix.clone());
                continue;
            }
            seen.push((parts.len(), ids.clone()));
        }
        parts.push(PartFound {
            kind: *kind,
            prefix: prefix.clone(),
            tensors: names.len(),
            aliases: Vec::new(),
        });
    }
    let mut other = BTreeMap::new();
    for name in tensors.keys() {
        if !claimed.contains(name.as_str()) {
            let group = name.split('.').next().unwrap_or(name).to_string();
            *other.entry(group).or_insert(0) += 1;
        }
    }
    Layout {
        framework,
        online,
        target,
        parts,
        other,
        unsupported,
    }
}

/// Every ResNet among `tensors` (same-tensor duplicates merged), and the ResNet-like tensors we
/// refuse with the reason.
fn find_encoders(tensors: &BTreeMap<String, TensorEntry>) -> (Vec<EncoderAt>, Vec<String>) {
    let is_conv = |name: &str| tensors.get(name).is_some_and(|t| t.shape.len() == 4);
    let mut found: Vec<EncoderAt> = Vec::new();
    let mut unsupported = Vec::new();
    for name in tensors.keys() {
        if let Some(p) = name.strip_suffix("conv1.weight") {
            if (p.is_empty() || p.ends_with('.'))
                && is_conv(name)
                && tensors.contains_key(&format!("{p}layer1.0.conv1.weight"))
            {
                found.push(EncoderAt {
                    prefix: p.to_string(),
                    scheme: Scheme::Torchvision,
                    aliases: Vec::new(),
                });
            }
        }
        if let Some(p) = name.strip_suffix("0.weight") {
            if (p.is_empty() || p.ends_with('.'))
                && is_conv(name)
                && tensors.contains_key(&format!("{p}1.running_var"))
            {
                if tensors.contains_key(&format!("{p}4.0.conv1.weight")) {
                    found.push(EncoderAt {
                        prefix: p.to_string(),
                        scheme: Scheme::Sequential,
                        aliases: Vec::new(),
                    });
                } else if tensors.contains_key(&format!("{p}2.0.conv1.weight")) {
                    unsupported.push(format!(
                        "`{p}` looks like lightly's ResNetGenerator as an nn.Sequential of its \
                         children, which drops the stem ReLU: not a torchvision ResNet"
                    ));
                }
            }
        }
    }
    // The same tensors under two prefixes (identity of the stem convolution and last tensor).
    let key = |e: &EncoderAt| -> Option<String> {
        let conv1 = match e.scheme {
            Scheme::Torchvision => format!("{}conv1.weight", e.prefix),
            Scheme::Sequential => format!("{}0.weight", e.prefix),
            Scheme::AsIs => return None,
        };
        tensors.get(&conv1)?.identity.clone()
    };
    let mut merged: Vec<EncoderAt> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for e in found {
        match key(&e) {
            Some(k) if seen.contains_key(&k) => {
                merged[seen[&k]].aliases.push(e.prefix);
            }
            k => {
                if let Some(k) = k {
                    seen.insert(k, merged.len());
                }
                merged.push(e);
            }
        }
    }
    (merged, unsupported)
}
