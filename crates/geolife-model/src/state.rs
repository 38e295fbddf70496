//! Named-tensor view of a module: maps every burn parameter path to its PyTorch state-dict key
//! (the one place where unavoidable renames live), exports f32 tensors and loads them back.
//! Kept over burn-store 0.22.1's adapters: per-model torch names, flattened-norm reshapes and a
//! per-key load report, which its regex remapping and strict shape check cannot express.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Tensor, TensorData};

/// A float tensor as stored in a state dict (row-major, PyTorch layout).
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// Shape in PyTorch order.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

impl NamedTensor {
    /// Number of elements implied by the shape.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A PyTorch-style state dict: key -> tensor, sorted by key.
pub type StateDict = BTreeMap<String, NamedTensor>;

/// How a parameter is stored differently in burn and PyTorch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Same shape and order.
    Same,
    /// burn `Linear` weight `[in, out]` vs PyTorch `[out, in]`.
    Transposed,
}

/// One parameter of a module, with its torch name.
#[derive(Debug, Clone)]
pub struct ParamSlot {
    /// burn path (`landsat_model.layer1.0.bn1.gamma`).
    pub burn_path: String,
    /// PyTorch key (`landsat_model.layer1.0.bn1.weight`).
    pub torch_key: String,
    /// burn shape.
    pub shape: Vec<usize>,
    /// Layout difference.
    pub layout: Layout,
}

/// A module whose parameters have PyTorch names.
pub trait TorchNamed: Module + Sized {
    /// PyTorch key for a burn path (enum variant segments included, norm renames applied
    /// by the caller).
    fn torch_key(&self, burn_path: &str) -> String;

    /// PyTorch shape of a parameter stored with `burn_shape` (override for flattened norms).
    fn torch_shape(&self, _torch_key: &str, burn_shape: &[usize]) -> Vec<usize> {
        burn_shape.to_vec()
    }
}

/// Tracks the burn path and the containing struct while walking a module.
#[derive(Default)]
struct PathTracker {
    names: Vec<String>,
    containers: Vec<String>,
}

impl PathTracker {
    fn enter(&mut self, name: &str, container: &str) {
        self.names.push(name.to_string());
        self.containers.push(container.to_string());
    }
    fn exit(&mut self) {
        self.names.pop();
        self.containers.pop();
    }
    fn path(&self) -> String {
        self.names.join(".")
    }
    /// Burn-to-torch rules common to every model: norm `gamma`/`beta` -> `weight`/`bias`,
    /// `Linear.weight` transposed.
    fn generic(&self) -> (String, Layout) {
        let path = self.path();
        // burn passes, with each entered name, the type of the struct that holds the field.
        let parent = self.containers.last().map(String::as_str).unwrap_or("");
        let leaf = self.names.last().map(String::as_str).unwrap_or("");
        let is_norm = matches!(parent, "Struct:BatchNorm" | "Struct:LayerNorm");
        let renamed = match (is_norm, leaf) {
            (true, "gamma") => format!("{}weight", &path[..path.len() - 5]),
            (true, "beta") => format!("{}bias", &path[..path.len() - 4]),
            _ => path,
        };
        let layout = if parent == "Struct:Linear" && leaf == "weight" {
            Layout::Transposed
        } else {
            Layout::Same
        };
        (renamed, layout)
    }
}

/// Collects slots and, optionally, values.
struct Collector<'a, M: TorchNamed> {
    model: &'a M,
    tracker: PathTracker,
    slots: Vec<ParamSlot>,
    values: Option<StateDict>,
}

impl<M: TorchNamed> ModuleVisitor for Collector<'_, M> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.tracker.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.tracker.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let (generic, layout) = self.tracker.generic();
        let torch_key = self.model.torch_key(&generic);
        let shape = param.lazy_shape().to_vec();
        if let Some(values) = &mut self.values {
            let mut t = param.val();
            if layout == Layout::Transposed && D == 2 {
                t = t.transpose();
            }
            let data = t.into_data().convert::<f32>();
            let torch_shape = match layout {
                Layout::Transposed => shape.iter().rev().copied().collect(),
                Layout::Same => self.model.torch_shape(&torch_key, &shape),
            };
            // `into`: the values' own allocation when it can be reused (a checkpoint of the
            // paper preset is 150 MB of them).
            let data = data.try_into_vec::<f32>().unwrap_or_default();
            values.insert(
                torch_key.clone(),
                NamedTensor {
                    shape: torch_shape,
                    data,
                },
            );
        }
        self.slots.push(ParamSlot {
            burn_path: self.tracker.path(),
            torch_key,
            shape,
            layout,
        });
    }
}

/// Every parameter slot of `model` in visiting order.
pub fn slots<M: TorchNamed>(model: &M) -> Vec<ParamSlot> {
    let mut c = Collector {
        model,
        tracker: PathTracker::default(),
        slots: Vec::new(),
        values: None,
    };
    model.visit(&mut c);
    c.slots
}

/// The model's parameters and buffers as a PyTorch-compatible state dict. BatchNorm running
/// statistics are synchronised first (burn applies the last update lazily).
pub fn state_dict<M: TorchNamed>(model: &M) -> StateDict {
    let synced = model.valid();
    let mut c = Collector {
        model: &synced,
        tracker: PathTracker::default(),
        slots: Vec::new(),
        values: Some(StateDict::new()),
    };
    synced.visit(&mut c);
    c.values.unwrap_or_default()
}

/// What a load did, key by key (PyTorch names).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LoadReport {
    /// Keys loaded as they were.
    pub loaded: Vec<String>,
    /// Keys loaded after a reshape (flattened norms): `(key, file shape, model shape)`.
    pub reshaped: Vec<(String, Vec<usize>, Vec<usize>)>,
    /// Keys whose input-channel count was adapted (stem): `(key, file shape, model shape)`.
    pub adapted: Vec<(String, Vec<usize>, Vec<usize>)>,
    /// Model parameters absent from the file (kept at their initial values).
    pub missing: Vec<String>,
    /// File keys the model has no parameter for (BatchNorm `num_batches_tracked` excluded).
    pub unexpected: Vec<String>,
    /// Keys present with a shape that could not be fitted: `(key, file shape, model shape)`.
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
}

impl LoadReport {
    /// True when every model parameter was filled and nothing was left over or mismatched.
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }

    /// A multi-line human summary.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "loaded {}, reshaped {}, adapted {}, missing {}, unexpected {}, mismatched {}\n",
            self.loaded.len() + self.reshaped.len() + self.adapted.len(),
            self.reshaped.len(),
            self.adapted.len(),
            self.missing.len(),
            self.unexpected.len(),
            self.mismatched.len()
        );
        for (k, f, m) in &self.reshaped {
            s.push_str(&format!("  reshaped   {k}: {f:?} -> {m:?}\n"));
        }
        for (k, f, m) in &self.adapted {
            s.push_str(&format!("  adapted    {k}: {f:?} -> {m:?}\n"));
        }
        for (k, f, m) in &self.mismatched {
            s.push_str(&format!("  mismatched {k}: file {f:?}, model {m:?}\n"));
        }
        for k in &self.missing {
            s.push_str(&format!("  missing    {k}\n"));
        }
        for k in &self.unexpected {
            s.push_str(&format!("  unexpected {k}\n"));
        }
        s
    }
}

/// PyTorch buffers that geolife recomputes instead of storing (BatchNorm's step counter,
/// Swin and MaxViT constant position tables): present in files, never "unexpected".
pub const RECOMPUTED_BUFFERS: [&str; 3] = [
    "num_batches_tracked",
    "relative_position_index",
    "relative_coords_table",
];

/// Replaces parameter values from a state dict.
struct Loader<'a, M: TorchNamed> {
    model: &'a M,
    tracker: PathTracker,
    dict: &'a StateDict,
    report: LoadReport,
    used: std::collections::BTreeSet<String>,
}

impl<M: TorchNamed> ModuleMapper for Loader<'_, M> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.tracker.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.tracker.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (generic, layout) = self.tracker.generic();
        let key = self.model.torch_key(&generic);
        let shape: Vec<usize> = param.lazy_shape().to_vec();
        let Some(found) = self.dict.get(&key) else {
            self.report.missing.push(key);
            return param;
        };
        self.used.insert(key.clone());
        let torch_shape: Vec<usize> = match layout {
            Layout::Transposed => shape.iter().rev().copied().collect(),
            Layout::Same => shape.clone(),
        };
        let numel: usize = shape.iter().product();
        let reshaped = found.shape != torch_shape;
        if reshaped && !(D == 1 && found.numel() == numel && found.data.len() == numel) {
            self.report
                .mismatched
                .push((key, found.shape.clone(), torch_shape));
            return param;
        }
        if found.data.len() != numel {
            self.report
                .mismatched
                .push((key, found.shape.clone(), torch_shape));
            return param;
        }
        let device = param.lazy_device();
        let data = TensorData::new(found.data.clone(), torch_shape.clone());
        let mut t: Tensor<D> = Tensor::from_data(data, &device);
        if layout == Layout::Transposed {
            t = t.transpose();
        }
        if reshaped {
            self.report
                .reshaped
                .push((key, found.shape.clone(), torch_shape));
        } else {
            self.report.loaded.push(key);
        }
        let id = param.id;
        param.transform_for_load(t, id)
    }
}

/// Load `dict` into `model`, by PyTorch key. Shapes must match, except 1-D parameters that
/// hold a flattened multi-dimensional PyTorch tensor (reported as reshaped). Nothing is
/// adapted here: see [`crate::import::adapt_stems`] for channel adaptation.
pub fn load_state_dict<M: TorchNamed>(model: M, dict: &StateDict) -> (M, LoadReport) {
    // The mapper needs a reference to the model for naming while consuming it: name with a
    // clone (cheap: parameters are reference-counted tensors).
    let namer = model.clone();
    let mut loader = Loader {
        model: &namer,
        tracker: PathTracker::default(),
        dict,
        report: LoadReport::default(),
        used: Default::default(),
    };
    let model = model.map(&mut loader);
    let mut report = loader.report;
    report.unexpected = dict
        .keys()
        .filter(|k| !loader.used.contains(*k) && !RECOMPUTED_BUFFERS.iter().any(|b| k.ends_with(b)))
        .cloned()
        .collect();
    (model, report)
}

/// The ids of `model`'s float parameters, in visiting order. An optimiser's state is keyed by
/// these ids: a training checkpoint records them (a few hundred numbers) so that a model
/// rebuilt from its state dict can take them back with [`with_param_ids`].
pub fn param_ids<M: Module>(model: &M) -> Vec<u64> {
    struct Ids(Vec<u64>);
    impl ModuleVisitor for Ids {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.id.val());
        }
    }
    let mut ids = Ids(Vec::new());
    model.visit(&mut ids);
    ids.0
}

/// `model` with its float parameters given `ids` in visiting order (values unchanged), the
/// inverse of [`param_ids`]. Errors when the count differs (a checkpoint of another model).
/// BatchNorm running statistics keep their own ids: burn's `RunningState` takes none from a
/// mapper, and no optimiser state is keyed by them (they have no gradient).
pub fn with_param_ids<M: Module>(model: M, ids: &[u64]) -> Result<M, String> {
    struct Assign<'a> {
        ids: &'a [u64],
        next: usize,
    }
    impl ModuleMapper for Assign<'_> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let at = self.next;
            self.next += 1;
            match self.ids.get(at) {
                Some(&id) => {
                    let (_, value, mapper) = param.consume();
                    Param::from_mapped_value(burn::module::ParamId::from(id), value, mapper)
                }
                None => param,
            }
        }
    }
    let found = param_ids(&model).len();
    if found != ids.len() {
        return Err(format!(
            "{} parameter ids recorded, the model has {found} parameters",
            ids.len()
        ));
    }
    let mut assign = Assign { ids, next: 0 };
    Ok(model.map(&mut assign))
}
