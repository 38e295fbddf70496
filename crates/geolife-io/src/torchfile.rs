//! A safe reader of `torch.save` zip archives: bare tensors (the `.pt` cubes) and state dicts
//! (torchvision `.pth`). The pickle is interpreted over a small whitelist of opcodes and
//! globals; anything else is refused by name. Nothing is ever imported or executed.
//! Kept over burn's `pytorch-reader`: it refuses a bare tensor at the pickle root (the `.pt`
//! cubes), and the fuzz corpus asserts on these survey-tagged error variants.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What can go wrong reading a torch file. Every variant names the file and, when known, the
/// survey (printed as ` (survey 123)`); geolife-data turns each into the `DataError` variant of
/// the same name and message.
#[derive(Debug, thiserror::Error)]
pub enum TorchError {
    /// An OS-level read failure.
    #[error("{path}{}", survey_tag(.survey))]
    Io {
        path: PathBuf,
        survey: Option<u64>,
        #[source]
        source: std::io::Error,
    },
    /// The file is absent; `hint` says how to fix it.
    #[error("missing {what}{}: expected at {path}; {hint}", survey_tag(.survey))]
    Missing {
        path: PathBuf,
        survey: Option<u64>,
        what: String,
        hint: String,
    },
    /// Not a readable zip archive.
    #[error("{path}{}: not a torch.save zip archive: {reason}", survey_tag(.survey))]
    NotZip {
        path: PathBuf,
        survey: Option<u64>,
        reason: String,
    },
    /// A file that ends before the data it declares (zip entry, tensor storage).
    #[error("{path}{}: truncated: {reason}", survey_tag(.survey))]
    Truncated {
        path: PathBuf,
        survey: Option<u64>,
        reason: String,
    },
    /// A pickle that uses an opcode or global outside the allowed tensor subset.
    #[error(
        "{path}{}: refused pickle content {what} (only plain tensors and state dicts are read; nothing is executed)",
        survey_tag(.survey)
    )]
    ForbiddenPickle {
        path: PathBuf,
        survey: Option<u64>,
        what: String,
    },
    /// A pickle that is structurally invalid (stack underflow, bad argument, ...).
    #[error("{path}{}: malformed pickle: {reason}", survey_tag(.survey))]
    Pickle {
        path: PathBuf,
        survey: Option<u64>,
        reason: String,
    },
    /// A tensor with an unexpected shape.
    #[error(
        "{path}{}: wrong shape: expected {expected:?}, found {found:?}",
        survey_tag(.survey)
    )]
    Shape {
        path: PathBuf,
        survey: Option<u64>,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A tensor with an unexpected element type (or storages that are not little-endian).
    #[error("{path}{}: wrong dtype: expected {expected}, found {found}", survey_tag(.survey))]
    Dtype {
        path: PathBuf,
        survey: Option<u64>,
        expected: String,
        found: String,
    },
    /// An internal inconsistency of the pickle machine.
    #[error("invalid option: {0}")]
    Invalid(String),
}

impl TorchError {
    fn io(path: &Path, survey: Option<u64>, source: std::io::Error) -> Self {
        TorchError::Io {
            path: path.to_path_buf(),
            survey,
            source,
        }
    }
}

/// ` (survey 123)`, or nothing without a survey.
fn survey_tag(survey: &Option<u64>) -> String {
    survey
        .map(|id| format!(" (survey {id})"))
        .unwrap_or_default()
}

type Result<T, E = TorchError> = std::result::Result<T, E>;

/// Element type of a tensor storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::I32 => 4,
            DType::F64 | DType::I64 => 8,
        }
    }

    /// PyTorch-style name (`float32`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::F64 => "float64",
            DType::I64 => "int64",
            DType::I32 => "int32",
        }
    }

    fn from_storage(name: &str) -> Option<DType> {
        Some(match name {
            "FloatStorage" => DType::F32,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "DoubleStorage" => DType::F64,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            _ => return None,
        })
    }
}

/// A tensor read from a torch file: its logical shape and the strided view into its storage.
#[derive(Debug, Clone)]
pub struct TorchTensor {
    /// Element type of the storage.
    pub dtype: DType,
    /// Logical shape (empty for a 0-dim scalar).
    pub shape: Vec<usize>,
    /// Strides in elements, as stored in the file.
    pub stride: Vec<usize>,
    /// Offset of element [0, ..., 0] in the storage, in elements.
    pub offset: usize,
    /// Raw little-endian storage bytes (shared between views of one storage).
    storage: Arc<Vec<u8>>,
}

impl TorchTensor {
    /// Number of logical elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Values converted to f32 in C order of the logical shape, honouring size, stride and
    /// offset (validated against the storage length when the file was read).
    pub fn data_f32(&self) -> Vec<f32> {
        let n = self.numel();
        let mut out = Vec::with_capacity(n);
        if n == 0 {
            return out;
        }
        let nd = self.shape.len();
        let mut idx = vec![0usize; nd];
        let mut pos = self.offset;
        for _ in 0..n {
            out.push(self.element(pos));
            // Advance the multi-index in C order, keeping `pos` in sync.
            for d in (0..nd).rev() {
                idx[d] += 1;
                pos += self.stride[d];
                if idx[d] < self.shape[d] {
                    break;
                }
                pos -= self.stride[d] * self.shape[d];
                idx[d] = 0;
            }
        }
        out
    }

    fn element(&self, pos: usize) -> f32 {
        let s = self.dtype.size();
        let b = &self.storage[pos * s..pos * s + s];
        match self.dtype {
            DType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            DType::F64 => {
                f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
            }
            DType::F16 => f16_to_f32(u16::from_le_bytes([b[0], b[1]])),
            DType::BF16 => f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16),
            DType::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
            DType::I64 => {
                i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
            }
        }
    }

    /// Checks dtype and shape against what the caller expects; errors name `path`/`survey`.
    pub fn expect(
        &self,
        path: &Path,
        survey: impl Into<Option<u64>>,
        dtype: DType,
        shape: &[usize],
    ) -> Result<()> {
        let survey = survey.into();
        if self.dtype != dtype {
            return Err(TorchError::Dtype {
                path: path.to_path_buf(),
                survey,
                expected: dtype.name().into(),
                found: self.dtype.name().into(),
            });
        }
        if self.shape != shape {
            return Err(TorchError::Shape {
                path: path.to_path_buf(),
                survey,
                expected: shape.to_vec(),
                found: self.shape.clone(),
            });
        }
        Ok(())
    }
}

/// IEEE 754 half -> single (exact; subnormals, inf and NaN included).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal half: value = m * 2^-24, exact in f32.
            let v = m as f32 * f32::from_bits(0x3380_0000); // 2^-24
            return if sign != 0 { -v } else { v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, m) => sign | 0x7fc0_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// Reads a file holding one bare tensor (e.g. the GLC24 `.pt` cubes).
pub fn load_tensor(path: &Path) -> Result<TorchTensor> {
    load_tensor_for(path, None)
}

/// Like [`load_tensor`], with the survey id to name in errors.
pub fn load_tensor_for(path: &Path, survey: Option<u64>) -> Result<TorchTensor> {
    let file = File::open(path).map_err(|e| io_or_missing(path, survey, e))?;
    tensor_from(file, &Ctx::new(path, survey))
}

/// [`load_tensor`] on the bytes of a torch file already in memory (`origin` only names them
/// in errors).
pub fn load_tensor_from_bytes(origin: &Path, bytes: &[u8]) -> Result<TorchTensor> {
    tensor_from(std::io::Cursor::new(bytes), &Ctx::new(origin, None))
}

fn tensor_from<R: Read + Seek>(reader: R, ctx: &Ctx) -> Result<TorchTensor> {
    let (root, mut archive) = read_archive(reader, ctx)?;
    match root {
        Value::Tensor(t) => resolve_one(&t, &mut archive, ctx, &mut Storages::default()),
        other => Err(ctx.pickle(format!("expected one bare tensor, found {}", other.kind()))),
    }
}

/// Reads a state dict (`OrderedDict` name -> tensor), e.g. torchvision `.pth` weights.
/// Nested dicts (`{"state_dict": {...}}`) are flattened with `.`-joined keys; non-tensor
/// entries (epoch counters, ...) are skipped. Order is the file's order.
pub fn load_state_dict(path: &Path) -> Result<Vec<(String, TorchTensor)>> {
    let file = File::open(path).map_err(|e| io_or_missing(path, None, e))?;
    state_dict_from(file, &Ctx::new(path, None))
}

/// [`load_state_dict`] on the bytes of a torch file already in memory (`origin` only names
/// them in errors).
pub fn load_state_dict_from_bytes(
    origin: &Path,
    bytes: &[u8],
) -> Result<Vec<(String, TorchTensor)>> {
    state_dict_from(std::io::Cursor::new(bytes), &Ctx::new(origin, None))
}

fn state_dict_from<R: Read + Seek>(reader: R, ctx: &Ctx) -> Result<Vec<(String, TorchTensor)>> {
    let (root, mut archive) = read_archive(reader, ctx)?;
    let mut refs = Vec::new();
    flatten(&root, "", 0, &mut refs, ctx)?;
    if refs.is_empty() {
        return Err(ctx.pickle(format!(
            "expected a state dict (name -> tensor), found {} without tensors",
            root.kind()
        )));
    }
    let mut storages = Storages::default();
    refs.into_iter()
        .map(|(k, t)| Ok((k, resolve_one(&t, &mut archive, ctx, &mut storages)?)))
        .collect()
}

fn io_or_missing(path: &Path, survey: Option<u64>, e: std::io::Error) -> TorchError {
    if e.kind() == std::io::ErrorKind::NotFound {
        TorchError::Missing {
            path: path.to_path_buf(),
            survey,
            what: "torch file".into(),
            hint: "check the path and that the archive is fully unzipped".into(),
        }
    } else {
        TorchError::io(path, survey, e)
    }
}

/// Error context: the file and survey being read.
struct Ctx {
    path: PathBuf,
    survey: Option<u64>,
}

impl Ctx {
    fn new(path: &Path, survey: Option<u64>) -> Ctx {
        Ctx {
            path: path.to_path_buf(),
            survey,
        }
    }
    fn pickle(&self, reason: impl Into<String>) -> TorchError {
        TorchError::Pickle {
            path: self.path.clone(),
            survey: self.survey,
            reason: reason.into(),
        }
    }
    fn forbidden(&self, what: impl Into<String>) -> TorchError {
        TorchError::ForbiddenPickle {
            path: self.path.clone(),
            survey: self.survey,
            what: what.into(),
        }
    }
    fn truncated(&self, reason: impl Into<String>) -> TorchError {
        TorchError::Truncated {
            path: self.path.clone(),
            survey: self.survey,
            reason: reason.into(),
        }
    }
}

/// The opened archive: entry-name prefix (`<stem>/`), the zip itself and its length in bytes.
struct Archive<R: Read + Seek> {
    zip: zip::ZipArchive<R>,
    prefix: String,
    len: u64,
}

/// Storages read so far, by key (views share one storage).
#[derive(Default)]
struct Storages(HashMap<String, (DType, Arc<Vec<u8>>)>);

/// Largest accepted `data.pkl` (state dicts of big models stay far below).
const MAX_PICKLE_BYTES: u64 = 64 << 20;

/// Opens the archive, checks the byte order and unpickles `data.pkl`.
fn read_archive<R: Read + Seek>(mut file: R, ctx: &Ctx) -> Result<(Value, Archive<R>)> {
    let mut magic = [0u8; 4];
    let n =
        read_up_to(&mut file, &mut magic).map_err(|e| TorchError::io(&ctx.path, ctx.survey, e))?;
    let len = file
        .seek(std::io::SeekFrom::End(0))
        .map_err(|e| TorchError::io(&ctx.path, ctx.survey, e))?;
    file.rewind()
        .map_err(|e| TorchError::io(&ctx.path, ctx.survey, e))?;
    let looks_zip = n == 4 && magic == *b"PK\x03\x04";
    let zip = match zip::ZipArchive::new(file) {
        Ok(z) => z,
        Err(e) if looks_zip => {
            return Err(ctx.truncated(format!(
                "zip archive without a readable central directory ({e})"
            )));
        }
        Err(e) => {
            return Err(TorchError::NotZip {
                path: ctx.path.clone(),
                survey: ctx.survey,
                reason: format!(
                    "{e} (legacy non-zip torch files are not supported: re-save with torch.save in PyTorch >= 1.6)"
                ),
            });
        }
    };
    let pkl_name = zip
        .file_names()
        .find(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .map(str::to_owned)
        .ok_or_else(|| TorchError::NotZip {
            path: ctx.path.clone(),
            survey: ctx.survey,
            reason: "zip archive without a `*/data.pkl` entry".into(),
        })?;
    let prefix = pkl_name[..pkl_name.len() - "data.pkl".len()].to_string();
    let mut archive = Archive { zip, prefix, len };
    if let Some(order) = archive.read_optional("byteorder", ctx, 64)? {
        let order = String::from_utf8_lossy(&order).trim().to_string();
        if order != "little" {
            return Err(TorchError::Dtype {
                path: ctx.path.clone(),
                survey: ctx.survey,
                expected: "little-endian storages".into(),
                found: format!("byteorder `{order}`"),
            });
        }
    }
    let pkl = archive
        .read_optional("data.pkl", ctx, MAX_PICKLE_BYTES)?
        .ok_or_else(|| ctx.pickle("data.pkl vanished"))?;
    let value = Machine::new(ctx).run(&pkl)?;
    Ok((value, archive))
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

impl<R: Read + Seek> Archive<R> {
    /// Reads entry `<prefix><name>`; `None` when absent; at most `limit` bytes.
    fn read_optional(&mut self, name: &str, ctx: &Ctx, limit: u64) -> Result<Option<Vec<u8>>> {
        let full = format!("{}{}", self.prefix, name);
        let mut entry = match self.zip.by_name(&full) {
            Ok(e) => e,
            Err(zip::result::ZipError::FileNotFound) => return Ok(None),
            Err(e) => return Err(ctx.truncated(format!("entry {full}: {e}"))),
        };
        let size = entry.size();
        if size > limit {
            return Err(ctx.pickle(format!(
                "entry {full} is {size} bytes, more than the {limit} accepted"
            )));
        }
        // The declared size is a claim of the file: pre-allocate no more than the archive
        // holds, and read no more than declared (a deflated entry may inflate further).
        let mut buf = Vec::with_capacity(size.min(self.len) as usize);
        entry
            .by_ref()
            .take(size.saturating_add(1))
            .read_to_end(&mut buf)
            .map_err(|e| ctx.truncated(format!("entry {full}: {e}")))?;
        if buf.len() as u64 > size {
            return Err(TorchError::NotZip {
                path: ctx.path.clone(),
                survey: ctx.survey,
                reason: format!("entry {full} holds more than its declared {size} bytes"),
            });
        }
        if (buf.len() as u64) < size {
            return Err(ctx.truncated(format!(
                "entry {full} holds {} of its {size} bytes",
                buf.len()
            )));
        }
        Ok(Some(buf))
    }
}

/// Reads the storage of `t` (once per key) and checks that the view fits in it.
fn resolve_one<R: Read + Seek>(
    t: &TensorRef,
    archive: &mut Archive<R>,
    ctx: &Ctx,
    storages: &mut Storages,
) -> Result<TorchTensor> {
    let (dtype, bytes) = match storages.0.get(&t.storage.key) {
        Some(s) => s.clone(),
        None => {
            let name = format!("data/{}", t.storage.key);
            let want = (t.storage.numel as u64)
                .checked_mul(t.storage.dtype.size() as u64)
                .ok_or_else(|| ctx.pickle("storage size overflows"))?;
            let bytes = archive.read_optional(&name, ctx, want.max(1).saturating_mul(2))?;
            let bytes = bytes.ok_or_else(|| {
                ctx.truncated(format!(
                    "storage entry `{name}` is missing from the archive"
                ))
            })?;
            if (bytes.len() as u64) < want {
                return Err(ctx.truncated(format!(
                    "storage `{}` holds {} bytes, the pickle declares {} {} elements ({want} bytes)",
                    t.storage.key,
                    bytes.len(),
                    t.storage.numel,
                    t.storage.dtype.name()
                )));
            }
            let s = (t.storage.dtype, Arc::new(bytes));
            storages.0.insert(t.storage.key.clone(), s.clone());
            s
        }
    };
    if dtype != t.storage.dtype {
        return Err(ctx.pickle(format!(
            "storage `{}` is used with two dtypes",
            t.storage.key
        )));
    }
    if t.shape.len() != t.stride.len() {
        return Err(ctx.pickle(format!(
            "size {:?} and stride {:?} differ in length",
            t.shape, t.stride
        )));
    }
    let numel_storage = bytes.len() / dtype.size();
    // `data_f32` allocates one f32 per logical element: a view may not have more elements than
    // its storage (broadcast views with stride 0 are not read), so the output stays bounded by
    // the bytes really in the file.
    let numel = t
        .shape
        .iter()
        .try_fold(1usize, |n, &s| n.checked_mul(s))
        .ok_or_else(|| ctx.pickle(format!("tensor size {:?} overflows", t.shape)))?;
    if numel > numel_storage.min(t.storage.numel) {
        return Err(ctx.pickle(format!(
            "tensor of size {:?} has {numel} elements, more than the {} of storage `{}` (broadcast views are not read)",
            t.shape,
            numel_storage.min(t.storage.numel),
            t.storage.key
        )));
    }
    if t.shape.iter().all(|&s| s > 0) {
        // Largest storage index the view touches, overflow-checked.
        let mut last = t.offset;
        for (&s, &st) in t.shape.iter().zip(&t.stride) {
            last = (s - 1)
                .checked_mul(st)
                .and_then(|x| x.checked_add(last))
                .ok_or_else(|| ctx.pickle("tensor extent overflows"))?;
        }
        if last >= numel_storage.min(t.storage.numel) {
            return Err(ctx.truncated(format!(
                "tensor of size {:?}, stride {:?}, offset {} needs storage index {last}, storage `{}` has {} elements",
                t.shape, t.stride, t.offset, t.storage.key, numel_storage.min(t.storage.numel)
            )));
        }
    }
    Ok(TorchTensor {
        dtype,
        shape: t.shape.clone(),
        stride: t.stride.clone(),
        offset: t.offset,
        storage: bytes,
    })
}

/// Collects the tensors of a (possibly nested) dict with `.`-joined keys.
fn flatten(
    v: &Value,
    prefix: &str,
    depth: usize,
    out: &mut Vec<(String, TensorRef)>,
    ctx: &Ctx,
) -> Result<()> {
    let Value::Dict(items) = v else {
        return Ok(());
    };
    if depth > 4 {
        return Ok(());
    }
    for pair in items.items.chunks(2) {
        let key = match &pair[0] {
            Value::Str(s) => s.clone(),
            other => {
                return Err(ctx.pickle(format!(
                    "state dict key is a {}, expected a string",
                    other.kind()
                )));
            }
        };
        let name = if prefix.is_empty() {
            key
        } else {
            format!("{prefix}.{key}")
        };
        match &pair[1] {
            Value::Tensor(t) => out.push((name, t.clone())),
            d @ Value::Dict(_) => flatten(d, &name, depth + 1, out, ctx)?,
            _ => {}
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The restricted unpickler.

/// Deepest accepted container nesting.
const MAX_DEPTH: usize = 64;
/// Most values that may be materialised (memo copies included).
const MAX_NODES: usize = 1 << 24;
/// Most bytes of values the unpickler may materialise: every pushed value, every memo copy
/// (memoised values are cloned, so `GET`s of a value built from `GET`s double it) and every
/// mark. Real state dicts need well under 1 MiB.
const MAX_VALUE_BYTES: usize = 32 << 20;
/// Estimated bytes of one value node.
const NODE_BYTES: usize = std::mem::size_of::<Value>();

/// A whitelisted global.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Global {
    RebuildTensorV2,
    RebuildParameter,
    OrderedDict,
    Storage(DType),
}

#[derive(Debug, Clone)]
struct StorageRef {
    dtype: DType,
    key: String,
    numel: usize,
}

#[derive(Debug, Clone)]
struct TensorRef {
    storage: StorageRef,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

/// Items of a tuple, list or dict (dicts store key, value, key, value, ...), with the
/// nesting depth and estimated bytes cached so limits cost O(1) per operation.
#[derive(Debug, Clone, Default)]
struct Seq {
    items: Vec<Value>,
    depth: usize,
    size: usize,
}

impl Seq {
    fn push(&mut self, v: Value) -> std::result::Result<(), String> {
        self.depth = self.depth.max(v.depth() + 1);
        if self.depth > MAX_DEPTH {
            return Err(format!("containers nested deeper than {MAX_DEPTH}"));
        }
        self.size += v.size();
        self.items.push(v);
        Ok(())
    }
}

#[derive(Debug, Clone)]
enum Value {
    None,
    Bool,
    Int(i64),
    /// A float (values are never needed, only accepted).
    Float,
    Str(String),
    Tuple(Seq),
    List(Seq),
    Dict(Seq),
    Global(Global),
    Storage(StorageRef),
    Tensor(TensorRef),
}

impl Value {
    fn depth(&self) -> usize {
        match self {
            Value::Tuple(s) | Value::List(s) | Value::Dict(s) => s.depth.max(1),
            _ => 0,
        }
    }
    /// Estimated heap bytes, strings and nested values included.
    fn size(&self) -> usize {
        NODE_BYTES
            + match self {
                Value::Tuple(s) | Value::List(s) | Value::Dict(s) => s.size,
                Value::Str(s) => s.len(),
                Value::Storage(r) => r.key.len(),
                Value::Tensor(t) => t.storage.key.len() + 8 * (t.shape.len() + t.stride.len()),
                _ => 0,
            }
    }
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool => "bool",
            Value::Int(_) => "int",
            Value::Float => "float",
            Value::Str(_) => "str",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }
}

struct Machine<'a> {
    ctx: &'a Ctx,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    /// Estimated bytes materialised so far (see [`MAX_VALUE_BYTES`]).
    bytes: usize,
}

impl<'a> Machine<'a> {
    fn new(ctx: &'a Ctx) -> Self {
        Machine {
            ctx,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            bytes: 0,
        }
    }

    fn err(&self, pos: usize, reason: impl std::fmt::Display) -> TorchError {
        self.ctx.pickle(format!("at byte {pos}: {reason}"))
    }

    fn pop(&mut self, pos: usize) -> Result<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err(pos, "stack underflow"));
        }
        self.stack
            .pop()
            .ok_or_else(|| self.err(pos, "stack underflow"))
    }

    fn pop_mark(&mut self, pos: usize) -> Result<Vec<Value>> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| self.err(pos, "MARK expected"))?;
        Ok(self.stack.split_off(m))
    }

    fn push(&mut self, pos: usize, v: Value) -> Result<()> {
        self.charge(pos, v.size())?;
        self.stack.push(v);
        Ok(())
    }

    /// Counts `bytes` more materialised against [`MAX_VALUE_BYTES`].
    fn charge(&mut self, pos: usize, bytes: usize) -> Result<()> {
        self.bytes = self.bytes.saturating_add(bytes);
        if self.bytes > MAX_VALUE_BYTES {
            return Err(self.err(
                pos,
                format!(
                    "the pickle builds more than {} MiB of values",
                    MAX_VALUE_BYTES >> 20
                ),
            ));
        }
        Ok(())
    }

    fn seq(&self, pos: usize, items: Vec<Value>) -> Result<Seq> {
        let mut s = Seq::default();
        for v in items {
            s.push(v).map_err(|e| self.err(pos, e))?;
        }
        Ok(s)
    }

    fn top_mut(&mut self, pos: usize) -> Result<&mut Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err(pos, "stack underflow"));
        }
        self.stack
            .last_mut()
            .ok_or_else(|| TorchError::Invalid("empty stack".into()))
    }

    fn run(mut self, data: &[u8]) -> Result<Value> {
        let mut r = Cursor { data, pos: 0 };
        loop {
            let pos = r.pos;
            let op = r
                .u8()
                .ok_or_else(|| self.err(pos, "pickle ends without STOP"))?;
            let short = |s: &Self| s.err(pos, "pickle ends inside an opcode argument");
            match op {
                0x80 => {
                    // PROTO
                    let p = r.u8().ok_or_else(|| short(&self))?;
                    if p > 5 {
                        return Err(self.err(pos, format!("unsupported pickle protocol {p}")));
                    }
                }
                0x95 => {
                    // FRAME (protocol 4): a length hint only.
                    r.take(8).ok_or_else(|| short(&self))?;
                }
                b'.' => {
                    // STOP
                    let v = self.pop(pos)?;
                    return Ok(v);
                }
                b'(' => {
                    self.charge(pos, std::mem::size_of::<usize>())?;
                    self.marks.push(self.stack.len());
                }
                b'}' => self.push(pos, Value::Dict(Seq::default()))?,
                b']' => self.push(pos, Value::List(Seq::default()))?,
                b')' => self.push(pos, Value::Tuple(Seq::default()))?,
                0x85..=0x87 => {
                    // TUPLE1..3
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop(pos)?);
                    }
                    items.reverse();
                    let s = self.seq(pos, items)?;
                    self.stack.push(Value::Tuple(s));
                }
                b't' => {
                    let items = self.pop_mark(pos)?;
                    let s = self.seq(pos, items)?;
                    self.stack.push(Value::Tuple(s));
                }
                b'X' => {
                    let n = r.u32().ok_or_else(|| short(&self))? as usize;
                    let s = r.take(n).ok_or_else(|| short(&self))?;
                    let s = std::str::from_utf8(s).map_err(|_| self.err(pos, "invalid UTF-8"))?;
                    self.push(pos, Value::Str(s.to_owned()))?;
                }
                0x8c => {
                    let n = r.u8().ok_or_else(|| short(&self))? as usize;
                    let s = r.take(n).ok_or_else(|| short(&self))?;
                    let s = std::str::from_utf8(s).map_err(|_| self.err(pos, "invalid UTF-8"))?;
                    self.push(pos, Value::Str(s.to_owned()))?;
                }
                b'J' => {
                    let b = r.take(4).ok_or_else(|| short(&self))?;
                    let v = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    self.push(pos, Value::Int(v as i64))?;
                }
                b'K' => {
                    let v = r.u8().ok_or_else(|| short(&self))?;
                    self.push(pos, Value::Int(v as i64))?;
                }
                b'M' => {
                    let b = r.take(2).ok_or_else(|| short(&self))?;
                    self.push(pos, Value::Int(u16::from_le_bytes([b[0], b[1]]) as i64))?;
                }
                0x8a => {
                    // LONG1: little-endian two's complement of n bytes.
                    let n = r.u8().ok_or_else(|| short(&self))? as usize;
                    if n > 8 {
                        return Err(
                            self.err(pos, format!("LONG1 of {n} bytes does not fit in 64 bits"))
                        );
                    }
                    let b = r.take(n).ok_or_else(|| short(&self))?;
                    let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                        [0xffu8; 8]
                    } else {
                        [0u8; 8]
                    };
                    buf[..n].copy_from_slice(b);
                    self.push(pos, Value::Int(i64::from_le_bytes(buf)))?;
                }
                b'G' => {
                    // BINFLOAT: 8 bytes; the value itself is never needed.
                    r.take(8).ok_or_else(|| short(&self))?;
                    self.push(pos, Value::Float)?;
                }
                0x88 => self.push(pos, Value::Bool)?,
                0x89 => self.push(pos, Value::Bool)?,
                b'N' => self.push(pos, Value::None)?,
                b'c' => {
                    let module = r.line().ok_or_else(|| short(&self))?;
                    let name = r.line().ok_or_else(|| short(&self))?;
                    let g = self.global(module, name)?;
                    self.push(pos, Value::Global(g))?;
                }
                0x93 => {
                    // STACK_GLOBAL (protocol 4): module and name strings on the stack.
                    let name = self.pop(pos)?;
                    let module = self.pop(pos)?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => {
                            let g = self.global(m.as_bytes(), n.as_bytes())?;
                            self.push(pos, Value::Global(g))?;
                        }
                        _ => return Err(self.err(pos, "STACK_GLOBAL needs two strings")),
                    }
                }
                b'Q' => {
                    let pid = self.pop(pos)?;
                    let s = self.persistent(pos, pid)?;
                    self.push(pos, Value::Storage(s))?;
                }
                b'R' => {
                    let args = self.pop(pos)?;
                    let func = self.pop(pos)?;
                    let v = self.reduce(pos, func, args)?;
                    self.push(pos, v)?;
                }
                b'b' => {
                    // BUILD: only an OrderedDict's attribute state (`_metadata`) is accepted;
                    // it is checked for shape and dropped.
                    let state = self.pop(pos)?;
                    let target = self.top_mut(pos)?;
                    match (target, &state) {
                        (Value::Dict(_), Value::Dict(_) | Value::None | Value::Tuple(_)) => {}
                        (t, _) => {
                            let k = t.kind();
                            return Err(self.err(
                                pos,
                                format!(
                                    "BUILD on a {k} with {} state is not accepted",
                                    state.kind()
                                ),
                            ));
                        }
                    }
                }
                b's' => {
                    let v = self.pop(pos)?;
                    let k = self.pop(pos)?;
                    self.dict_insert(pos, vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark(pos)?;
                    if items.len() % 2 != 0 {
                        return Err(self.err(pos, "SETITEMS with an odd number of items"));
                    }
                    self.dict_insert(pos, items)?;
                }
                b'a' => {
                    let v = self.pop(pos)?;
                    self.list_append(pos, vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark(pos)?;
                    self.list_append(pos, items)?;
                }
                b'q' => {
                    let i = r.u8().ok_or_else(|| short(&self))? as u32;
                    self.memo_put(pos, i)?;
                }
                b'r' => {
                    let i = r.u32().ok_or_else(|| short(&self))?;
                    self.memo_put(pos, i)?;
                }
                0x94 => {
                    // MEMOIZE (protocol 4)
                    let i = self.memo.len() as u32;
                    self.memo_put(pos, i)?;
                }
                b'h' => {
                    let i = r.u8().ok_or_else(|| short(&self))? as u32;
                    self.memo_get(pos, i)?;
                }
                b'j' => {
                    let i = r.u32().ok_or_else(|| short(&self))?;
                    self.memo_get(pos, i)?;
                }
                other => {
                    return Err(self
                        .ctx
                        .forbidden(format!("opcode {} at byte {pos}", opcode_name(other))));
                }
            }
        }
    }

    fn memo_put(&mut self, pos: usize, i: u32) -> Result<()> {
        let v = self
            .stack
            .last()
            .cloned()
            .ok_or_else(|| self.err(pos, "memo store with an empty stack"))?;
        if self.memo.len() >= MAX_NODES {
            return Err(self.err(pos, "memo too large"));
        }
        self.charge(pos, v.size())?;
        self.memo.insert(i, v);
        Ok(())
    }

    fn memo_get(&mut self, pos: usize, i: u32) -> Result<()> {
        let v = self
            .memo
            .get(&i)
            .cloned()
            .ok_or_else(|| self.err(pos, format!("memo key {i} not set")))?;
        self.push(pos, v)
    }

    fn dict_insert(&mut self, pos: usize, items: Vec<Value>) -> Result<()> {
        let top = self.top_mut(pos)?;
        let Value::Dict(d) = top else {
            let k = top.kind();
            return Err(self.err(pos, format!("SETITEM(S) on a {k}")));
        };
        let mut d = std::mem::take(d);
        for v in items {
            d.push(v).map_err(|e| self.err(pos, e))?;
        }
        *self.top_mut(pos)? = Value::Dict(d);
        Ok(())
    }

    fn list_append(&mut self, pos: usize, items: Vec<Value>) -> Result<()> {
        let top = self.top_mut(pos)?;
        let Value::List(l) = top else {
            let k = top.kind();
            return Err(self.err(pos, format!("APPEND(S) on a {k}")));
        };
        let mut l = std::mem::take(l);
        for v in items {
            l.push(v).map_err(|e| self.err(pos, e))?;
        }
        *self.top_mut(pos)? = Value::List(l);
        Ok(())
    }

    fn global(&self, module: &[u8], name: &[u8]) -> Result<Global> {
        let module = String::from_utf8_lossy(module);
        let name = String::from_utf8_lossy(name);
        let g = match (module.as_ref(), name.as_ref()) {
            ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
            ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
            ("collections", "OrderedDict") => Some(Global::OrderedDict),
            ("torch", s) => DType::from_storage(s).map(Global::Storage),
            _ => None,
        };
        g.ok_or_else(|| self.ctx.forbidden(format!("global `{module}.{name}`")))
    }

    /// `('storage', <StorageType>, key, location, numel)`.
    fn persistent(&self, pos: usize, pid: Value) -> Result<StorageRef> {
        let Value::Tuple(t) = pid else {
            return Err(self.err(pos, "persistent id is not a tuple"));
        };
        match t.items.as_slice() {
            [
                Value::Str(tag),
                Value::Global(Global::Storage(dtype)),
                Value::Str(key),
                Value::Str(_loc),
                Value::Int(numel),
            ] if tag == "storage" && *numel >= 0 => {
                if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    return Err(self.err(pos, format!("storage key `{key}` is not a plain name")));
                }
                Ok(StorageRef {
                    dtype: *dtype,
                    key: key.clone(),
                    numel: *numel as usize,
                })
            }
            _ => Err(self.err(
                pos,
                "persistent id is not ('storage', <torch storage type>, key, location, numel)",
            )),
        }
    }

    fn reduce(&self, pos: usize, func: Value, args: Value) -> Result<Value> {
        let Value::Global(g) = func else {
            return Err(self.ctx.forbidden(format!(
                "REDUCE on a {} (only whitelisted globals may be called)",
                func.kind()
            )));
        };
        let Value::Tuple(args) = args else {
            return Err(self.err(pos, "REDUCE arguments are not a tuple"));
        };
        let a = args.items;
        match g {
            Global::OrderedDict => {
                if a.is_empty() {
                    Ok(Value::Dict(Seq::default()))
                } else {
                    Err(self.err(pos, "OrderedDict(...) with arguments is not accepted"))
                }
            }
            Global::RebuildTensorV2 => {
                if !(6..=7).contains(&a.len()) {
                    return Err(self.err(
                        pos,
                        format!("_rebuild_tensor_v2 with {} arguments", a.len()),
                    ));
                }
                let Value::Storage(storage) = &a[0] else {
                    return Err(
                        self.err(pos, "_rebuild_tensor_v2: first argument is not a storage")
                    );
                };
                let offset = self.usize_of(pos, &a[1], "storage offset")?;
                let shape = self.usizes(pos, &a[2], "size")?;
                let stride = self.usizes(pos, &a[3], "stride")?;
                if !matches!(a[4], Value::Bool) {
                    return Err(self.err(pos, "_rebuild_tensor_v2: requires_grad is not a bool"));
                }
                Ok(Value::Tensor(TensorRef {
                    storage: storage.clone(),
                    offset,
                    shape,
                    stride,
                }))
            }
            Global::RebuildParameter => match a.first() {
                Some(Value::Tensor(t)) => Ok(Value::Tensor(t.clone())),
                _ => Err(self.err(pos, "_rebuild_parameter: first argument is not a tensor")),
            },
            Global::Storage(d) => Err(self
                .ctx
                .forbidden(format!("calling storage type {}Storage", d.name()))),
        }
    }

    fn usize_of(&self, pos: usize, v: &Value, what: &str) -> Result<usize> {
        match v {
            Value::Int(i) if *i >= 0 => Ok(*i as usize),
            other => Err(self.err(
                pos,
                format!(
                    "{what}: expected a non-negative int, found {}",
                    other.kind()
                ),
            )),
        }
    }

    fn usizes(&self, pos: usize, v: &Value, what: &str) -> Result<Vec<usize>> {
        match v {
            Value::Tuple(t) => t
                .items
                .iter()
                .map(|x| self.usize_of(pos, x, what))
                .collect(),
            other => Err(self.err(
                pos,
                format!("{what}: expected a tuple, found {}", other.kind()),
            )),
        }
    }
}

/// Human name of a pickle opcode for refusal messages.
fn opcode_name(op: u8) -> String {
    let name = match op {
        b'R' => "REDUCE",
        b'i' => "INST",
        b'o' => "OBJ",
        0x81 => "NEWOBJ",
        0x92 => "NEWOBJ_EX",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'I' => "INT",
        b'L' => "LONG",
        b'F' => "FLOAT",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        b'P' => "PERSID",
        b'g' => "GET",
        b'p' => "PUT",
        b'd' => "DICT",
        b'l' => "LIST",
        0x82..=0x84 => "EXT",
        0x8b => "LONG4",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "",
    };
    if name.is_empty() {
        format!("0x{op:02x}")
    } else {
        format!("{name} (0x{op:02x})")
    }
}

/// A byte reader over the pickle.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.data.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// Bytes up to (excluding) the next newline.
    fn line(&mut self) -> Option<&'a [u8]> {
        let rest = self.data.get(self.pos..)?;
        let n = rest.iter().position(|&b| b == b'\n')?;
        self.pos += n + 1;
        Some(&rest[..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_conversion_matches_ieee_definition() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x0400), 2f32.powi(-14));
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert_eq!(f16_to_f32(0xfc00), f32::NEG_INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x8000).to_bits(), 0x8000_0000);
    }
}
