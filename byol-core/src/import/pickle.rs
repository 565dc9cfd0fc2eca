//! A restricted pickle reader: builds plain data (None, bools, ints, floats, strings, bytes,
//! tuples, lists, dicts) and numpy arrays from a pickle stream without ever calling anything.
//!
//! Only the binary opcodes of protocols 2–5 are accepted (no text opcodes of protocols 0/1, no
//! `INST`/`OBJ`, no extension registry, no out-of-band buffers), under one of two policies for
//! globals ([`Globals`]):
//!
//! - [`Globals::AllowList`] (the official DeepMind pickles, [`read`]): `GLOBAL` only for
//!   `numpy.core.multiarray._reconstruct` / `numpy._core.multiarray._reconstruct`,
//!   `numpy.ndarray`, `numpy.dtype`, `numpy.core.multiarray.scalar` (numpy scalars),
//!   `_codecs.encode` (how protocol 2 writes Python 3 `bytes`, latin-1 only),
//!   `collections.OrderedDict`, and inert record classes of the libraries a Haiku checkpoint
//!   names (`byol.*`, `haiku.*`, `optax.*`: named tuples and mappings, kept as [`Value::Record`]
//!   whose arguments are data). Any other global or a persistent id is an error naming it.
//! - [`Globals::Inert`] (the `data.pkl` of a `torch.save` file, [`read_inert`]): every class or
//!   function name stays a name. `REDUCE`/`NEWOBJ` of it gives a [`Value::Record`] of the
//!   arguments and `BUILD` stores the state beside them — nothing is looked up, constructed or
//!   called — so the objects a checkpoint carries besides tensors (omegaconf configs,
//!   `argparse.Namespace`, optimiser and callback states) are skipped as data; persistent ids
//!   (how `torch.save` points at its storages) are kept as [`Value::Persistent`]. Names of
//!   code-running callables (`os.system`, `posix.system`, `builtins.eval`, `subprocess.*`, …:
//!   [`is_code_global`]) refuse the whole file: no weights file needs them.
//!
//! Either way a refusal names the opcode or the global, and nothing here ever runs.

use std::collections::HashMap;
use std::rc::Rc;

/// A numpy element type (little-endian after reading).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    F32,
    F64,
    F16,
    I64,
    I32,
    U8,
    Bool,
}

impl Elem {
    fn size(self) -> usize {
        match self {
            Elem::F64 | Elem::I64 => 8,
            Elem::F32 | Elem::I32 => 4,
            Elem::F16 => 2,
            Elem::U8 | Elem::Bool => 1,
        }
    }
}

/// A numpy dtype: element type and whether the data is big-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dtype {
    pub elem: Elem,
    pub big_endian: bool,
}

/// A numpy array, data in C order and little-endian.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub elem: Elem,
    pub shape: Vec<usize>,
    pub data: Rc<Vec<u8>>,
}

impl Array {
    /// The elements converted to f32 (every element type of [`Elem`]).
    pub fn to_f32(&self) -> Vec<f32> {
        let d = &self.data;
        match self.elem {
            Elem::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Elem::F64 => d
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
            Elem::F16 => d
                .chunks_exact(2)
                .map(|c| half_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            Elem::I64 => d
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
            Elem::I32 => d
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
                .collect(),
            Elem::U8 | Elem::Bool => d.iter().map(|&b| b as f32).collect(),
        }
    }
}

fn half_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as f32;
    sign * match exp {
        0 => frac * 2f32.powi(-24),
        31 if frac == 0.0 => f32::INFINITY,
        31 => f32::NAN,
        e => (1.0 + frac / 1024.0) * 2f32.powi(e - 15),
    }
}

/// A value built by the reader.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Rc<Vec<u8>>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Array(Array),
    Dtype(Dtype),
    /// An integer wider than 64 bits (little-endian two's complement bytes), kept as data.
    BigInt(Rc<Vec<u8>>),
    /// An allowed global before it is applied.
    Global(Global),
    /// A persistent id ([`Globals::Inert`] only): `torch.save`'s reference to a storage, the id
    /// itself (a tuple) as data.
    Persistent(Box<Value>),
    /// An instance of an inert record class: its constructor arguments, `__setstate__` state and
    /// dict items, none of which was applied to anything.
    Record {
        class: String,
        args: Vec<Value>,
        state: Option<Box<Value>>,
        items: Vec<(Value, Value)>,
    },
}

/// The globals the reader knows.
#[derive(Debug, Clone, PartialEq)]
pub enum Global {
    Reconstruct,
    Ndarray,
    Dtype,
    Scalar,
    CodecsEncode,
    OrderedDict,
    Record(String),
}

impl Value {
    /// The entries of a dict, an `OrderedDict`, or a record wrapping a mapping (Haiku's
    /// `FlatMapping` keeps its dict as the first argument or as its state).
    pub fn as_mapping(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Dict(items) => Some(items),
            Value::Record {
                args, state, items, ..
            } => {
                if !items.is_empty() {
                    return Some(items);
                }
                if let Some(m) = args.first().and_then(Value::as_mapping) {
                    return Some(m);
                }
                state.as_deref().and_then(Value::as_mapping)
            }
            _ => None,
        }
    }

    /// The value under the string key `key` of a mapping (its last entry: a pickle that sets a
    /// key twice means the second value).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_mapping()?
            .iter()
            .rev()
            .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
            .map(|(_, v)| v)
    }

    /// The elements of a tuple, a list, or a named tuple (a record built from its fields).
    pub fn as_sequence(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(v) | Value::List(v) => Some(v),
            Value::Record { args, .. } if !args.is_empty() => Some(args),
            _ => None,
        }
    }
}

/// Why a pickle was refused or could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickleError(pub String);

impl std::fmt::Display for PickleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

type R<T> = std::result::Result<T, PickleError>;

fn err<T>(msg: impl Into<String>) -> R<T> {
    Err(PickleError(msg.into()))
}

/// Record classes (named tuples, mappings) a BYOL/Haiku checkpoint may name.
const RECORD_MODULES: [&str; 3] = ["byol", "haiku", "optax"];

/// What the reader does with the globals a pickle names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Globals {
    /// numpy arrays, plain containers and Haiku record classes; any other global is refused.
    AllowList,
    /// Any name is kept as an inert name (never resolved, never called), except the names of
    /// code-running callables ([`is_code_global`]), which refuse the file.
    Inert,
}

/// Modules whose callables run commands, code or I/O (a module or any submodule of it).
const CODE_MODULES: [&str; 30] = [
    "os",
    "posix",
    "nt",
    "subprocess",
    "sys",
    "shutil",
    "socket",
    "pty",
    "runpy",
    "importlib",
    "code",
    "codeop",
    "ctypes",
    "webbrowser",
    "pickle",
    "_pickle",
    "cPickle",
    "marshal",
    "dill",
    "commands",
    "multiprocessing",
    "signal",
    "pdb",
    "bdb",
    "timeit",
    "platform",
    "asyncio",
    "_thread",
    "threading",
    "urllib.request",
];

/// Builtins that run code, import, open files or reach attributes (the steps of every pickle
/// exploit chain).
const CODE_BUILTINS: [&str; 17] = [
    "eval",
    "exec",
    "execfile",
    "compile",
    "open",
    "__import__",
    "getattr",
    "setattr",
    "delattr",
    "globals",
    "locals",
    "vars",
    "input",
    "breakpoint",
    "apply",
    "reload",
    "file",
];

/// Whether `module.name` is a callable that runs commands or code, or opens the way to one
/// (`os.system`, `posix.system`, `builtins.eval`, `subprocess.Popen`, `operator.attrgetter`, …).
/// [`Globals::Inert`] refuses such a name wherever it appears: no weights file needs it. The list
/// is a courtesy that names the attack; the guarantee is that nothing is ever called.
pub fn is_code_global(module: &str, name: &str) -> bool {
    let in_module = |m: &str| module == m || module.starts_with(&format!("{m}."));
    CODE_MODULES.iter().any(|m| in_module(m))
        || (matches!(module, "builtins" | "__builtin__" | "__builtins__")
            && CODE_BUILTINS.contains(&name))
        || (module == "operator" && matches!(name, "attrgetter" | "methodcaller"))
        || (module == "torch" && name == "load")
        || in_module("torch.hub")
}

fn resolve_global(module: &str, name: &str, globals: Globals) -> R<Global> {
    if globals == Globals::Inert {
        if is_code_global(module, name) {
            return err(format!(
                "refused global `{module}.{name}`: it runs code when Python unpickles the file \
                 (a hostile or corrupted checkpoint); nothing was executed"
            ));
        }
        return Ok(match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            _ => Global::Record(format!("{module}.{name}")),
        });
    }
    Ok(match (module, name) {
        ("numpy.core.multiarray" | "numpy._core.multiarray", "_reconstruct") => Global::Reconstruct,
        ("numpy.core.multiarray" | "numpy._core.multiarray", "scalar") => Global::Scalar,
        ("numpy", "ndarray") => Global::Ndarray,
        ("numpy", "dtype") => Global::Dtype,
        ("_codecs", "encode") => Global::CodecsEncode,
        ("collections", "OrderedDict") => Global::OrderedDict,
        (m, n)
            if RECORD_MODULES
                .iter()
                .any(|r| m == *r || m.starts_with(&format!("{r}.")))
                && !n.is_empty()
                && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
        {
            Global::Record(format!("{m}.{n}"))
        }
        _ => {
            return err(format!(
                "refused global `{module}.{name}`: only numpy arrays and plain containers are read"
            ))
        }
    })
}

fn parse_dtype(code: &str) -> R<Dtype> {
    let (big_endian, body) = match code.as_bytes().first() {
        Some(b'>') => (true, &code[1..]),
        Some(b'<' | b'=' | b'|') => (false, &code[1..]),
        _ => (false, code),
    };
    let elem = match body {
        "f4" | "float32" => Elem::F32,
        "f8" | "float64" => Elem::F64,
        "f2" | "float16" => Elem::F16,
        "i8" | "int64" => Elem::I64,
        "i4" | "int32" => Elem::I32,
        "u1" | "uint8" => Elem::U8,
        "b1" | "bool" => Elem::Bool,
        other => return err(format!("unsupported numpy dtype `{other}`")),
    };
    Ok(Dtype { elem, big_endian })
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        if self.data.len() - self.pos < n {
            return err(format!("truncated at byte {}", self.pos));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> R<usize> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]) as usize)
    }
    fn u32(&mut self) -> R<usize> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    fn u64(&mut self) -> R<usize> {
        let b = self.take(8)?;
        let v = u64::from_le_bytes(b.try_into().map_err(|_| PickleError("truncated".into()))?);
        usize::try_from(v).map_err(|_| PickleError("length out of range".into()))
    }
    fn line(&mut self) -> R<&'a str> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| PickleError("unterminated GLOBAL line".into()))?;
        self.pos += end + 1;
        std::str::from_utf8(&rest[..end])
            .map_err(|_| PickleError("GLOBAL name is not UTF-8".into()))
    }
    fn utf8(&mut self, n: usize) -> R<String> {
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| PickleError(format!("string at byte {} is not UTF-8", self.pos)))
    }
}

/// Deepest nesting of containers a pickle may build. Values are trees whose derived `Clone`,
/// `Drop`, `PartialEq` and `Debug` recurse, as does the checkpoint conversion: a bound on the
/// depth bounds their stack use whatever the input (a Haiku checkpoint nests fewer than 20).
pub const MAX_DEPTH: usize = 200;

/// Most value nodes (plus string bytes) a pickle may create or copy. The memo holds copies, so a
/// few bytes of repeated memo `GET`s could otherwise grow memory exponentially; a node is under
/// 100 bytes, so this bounds the reader to about 400 MB (a Haiku checkpoint builds a few
/// thousand nodes; array data is shared, not counted).
pub const MAX_NODES: usize = 1 << 22;

/// Nodes (plus string bytes) of `v` and its depth, counted iteratively; stops once the count
/// passes `limit` (the answer is then only known to exceed it).
fn measure(v: &Value, limit: usize) -> (usize, usize) {
    let mut count = 0usize;
    let mut depth = 0usize;
    let mut todo: Vec<(&Value, usize)> = vec![(v, 1)];
    while let Some((v, d)) = todo.pop() {
        count += 1;
        depth = depth.max(d);
        if count > limit {
            break;
        }
        match v {
            Value::Str(s) => count += s.len(),
            Value::Tuple(items) | Value::List(items) => {
                todo.extend(items.iter().map(|c| (c, d + 1)));
            }
            Value::Dict(pairs) => {
                todo.extend(pairs.iter().flat_map(|(k, v)| [(k, d + 1), (v, d + 1)]));
            }
            Value::Record {
                args, state, items, ..
            } => {
                todo.extend(args.iter().map(|c| (c, d + 1)));
                todo.extend(state.iter().map(|c| (&**c, d + 1)));
                todo.extend(items.iter().flat_map(|(k, v)| [(k, d + 1), (v, d + 1)]));
            }
            Value::Array(a) => count += a.shape.len(),
            Value::Persistent(v) => todo.push((v, d + 1)),
            Value::BigInt(b) => count += b.len(),
            _ => {}
        }
    }
    (count, depth)
}

/// The machine: a stack of (value, memo slot it was stored in), marks and the memo, and what is
/// left of the [`MAX_NODES`] budget.
struct Machine {
    stack: Vec<(Value, Option<usize>)>,
    marks: Vec<usize>,
    memo: HashMap<usize, Value>,
    budget: usize,
}

impl Machine {
    fn push(&mut self, v: Value) {
        self.stack.push((v, None));
    }
    /// Charges `n` units to the budget.
    fn charge(&mut self, n: usize) -> R<()> {
        self.budget = self.budget.checked_sub(n).ok_or_else(|| {
            PickleError(format!(
                "more than {MAX_NODES} values built or copied (a memo bomb?)"
            ))
        })?;
        Ok(())
    }
    /// Charges a copy of `v` and checks that `v`, put inside a container, stays within
    /// [`MAX_DEPTH`].
    fn charge_child(&mut self, v: &Value) -> R<()> {
        let (count, depth) = measure(v, self.budget);
        self.charge(count)?;
        if depth + 1 > MAX_DEPTH {
            return err(format!("containers nested deeper than {MAX_DEPTH}"));
        }
        Ok(())
    }
    fn charge_children<'v>(&mut self, vs: impl IntoIterator<Item = &'v Value>) -> R<()> {
        vs.into_iter().try_for_each(|v| self.charge_child(v))
    }
    fn pop(&mut self) -> R<Value> {
        match self.stack.pop() {
            Some((v, _)) if self.marks.last().is_none_or(|&m| m <= self.stack.len()) => Ok(v),
            _ => err("stack underflow"),
        }
    }
    /// The values since the last MARK, charged to the budget of values built (what every op that
    /// keeps them does; POP_MARK alone discards them).
    fn pop_items(&mut self) -> R<Vec<Value>> {
        let v = self.pop_mark()?;
        self.charge_children(&v)?;
        Ok(v)
    }
    fn pop_mark(&mut self) -> R<Vec<Value>> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| PickleError("no MARK".into()))?;
        if m > self.stack.len() {
            return err("MARK beyond the stack");
        }
        Ok(self.stack.drain(m..).map(|(v, _)| v).collect())
    }
    /// Mutates the top value in place and refreshes its memo copy.
    fn with_top(&mut self, f: impl FnOnce(&mut Value) -> R<()>) -> R<()> {
        let (v, slot) = self
            .stack
            .last_mut()
            .ok_or_else(|| PickleError("empty stack".into()))?;
        f(v)?;
        if let Some(s) = *slot {
            let (count, _) = measure(v, self.budget);
            let copy = v.clone();
            self.charge(count)?;
            self.memo.insert(s, copy);
        }
        Ok(())
    }
    fn memoize(&mut self, slot: usize) -> R<()> {
        let (v, s) = self
            .stack
            .last_mut()
            .ok_or_else(|| PickleError("memo of nothing".into()))?;
        *s = Some(slot);
        let (count, _) = measure(v, self.budget);
        let copy = v.clone();
        self.charge(count)?;
        self.memo.insert(slot, copy);
        Ok(())
    }
    fn get(&mut self, slot: usize) -> R<()> {
        let empty = || PickleError(format!("memo slot {slot} is empty"));
        // Charged before the copy is made: the copy is what a memo bomb multiplies.
        let (count, _) = measure(self.memo.get(&slot).ok_or_else(empty)?, self.budget);
        self.charge(count)?;
        let v = self.memo.get(&slot).ok_or_else(empty)?.clone();
        self.stack.push((v, Some(slot)));
        Ok(())
    }
}

fn add_items(target: &mut Value, pairs: Vec<Value>) -> R<()> {
    if !pairs.len().is_multiple_of(2) {
        return err("SETITEMS with an odd number of values");
    }
    let mut it = pairs.into_iter();
    let dest = match target {
        Value::Dict(items) | Value::Record { items, .. } => items,
        _ => return err("SETITEM(S) on something that is not a dict"),
    };
    // Appended without looking for an earlier equal key (that search made a dict of n items cost
    // n² comparisons): lookups take the last entry of a key, as Python keeps the last value.
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        dest.push((k, v));
    }
    Ok(())
}

/// `callable(*args)` for the allowed globals: builds data, calls nothing.
fn apply(global: Global, args: Vec<Value>) -> R<Value> {
    match global {
        Global::Reconstruct => match args.first() {
            Some(Value::Global(Global::Ndarray)) => Ok(Value::Array(Array {
                elem: Elem::U8,
                shape: vec![0],
                data: Rc::new(Vec::new()),
            })),
            _ => err("_reconstruct of something that is not numpy.ndarray"),
        },
        Global::Dtype => match args.first() {
            Some(Value::Str(code)) => Ok(Value::Dtype(parse_dtype(code)?)),
            _ => err("numpy.dtype without a type code"),
        },
        Global::CodecsEncode => match (args.first(), args.get(1)) {
            (Some(Value::Str(s)), Some(Value::Str(enc))) if enc == "latin1" || enc == "latin-1" => {
                let bytes = s
                    .chars()
                    .map(|c| u8::try_from(c as u32))
                    .collect::<Result<Vec<u8>, _>>()
                    .map_err(|_| PickleError("latin-1 bytes out of range".into()))?;
                Ok(Value::Bytes(Rc::new(bytes)))
            }
            _ => err("_codecs.encode other than latin-1 bytes"),
        },
        Global::Scalar => match (args.first(), args.get(1)) {
            (Some(Value::Dtype(d)), Some(Value::Bytes(b))) => {
                Ok(Value::Array(array(*d, vec![], b)?))
            }
            _ => err("numpy scalar without dtype and bytes"),
        },
        Global::OrderedDict => match args.first() {
            None => Ok(Value::Dict(Vec::new())),
            Some(Value::List(pairs)) => {
                let mut items = Vec::new();
                for p in pairs {
                    match p.as_sequence() {
                        Some([k, v]) => items.push((k.clone(), v.clone())),
                        _ => return err("OrderedDict item is not a pair"),
                    }
                }
                Ok(Value::Dict(items))
            }
            _ => err("OrderedDict from something that is not a list of pairs"),
        },
        Global::Record(class) => Ok(Value::Record {
            class,
            args,
            state: None,
            items: Vec::new(),
        }),
        Global::Ndarray => err("numpy.ndarray called directly"),
    }
}

fn array(dtype: Dtype, shape: Vec<usize>, raw: &[u8]) -> R<Array> {
    let size = dtype.elem.size();
    let need = shape
        .iter()
        .try_fold(size, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| PickleError(format!("array shape {shape:?} overflows")))?;
    if raw.len() != need {
        return err(format!(
            "array of shape {shape:?} needs {need} bytes, the pickle holds {}",
            raw.len()
        ));
    }
    let mut data = raw.to_vec();
    if dtype.big_endian && size > 1 {
        data.chunks_exact_mut(size).for_each(|c| c.reverse());
    }
    Ok(Array {
        elem: dtype.elem,
        shape,
        data: Rc::new(data),
    })
}

/// `obj.__setstate__(state)` for arrays, dtypes and records. Under [`Globals::Inert`] the state
/// of anything but a record (the attributes of a dict or list subclass, such as a state dict's
/// `_metadata`) is dropped: it is not data we read.
fn build(target: &mut Value, state: Value, globals: Globals) -> R<()> {
    if globals == Globals::Inert && !matches!(target, Value::Record { .. }) {
        return Ok(());
    }
    match target {
        Value::Array(a) => {
            // (version, shape, dtype, is_fortran, raw data)
            let s = state.as_sequence().unwrap_or(&[]);
            let (shape, dtype, fortran, raw) = match s {
                [Value::Int(_), shape, Value::Dtype(d), fortran, raw] => (shape, *d, fortran, raw),
                _ => return err("numpy array state is not (version, shape, dtype, fortran, data)"),
            };
            if matches!(fortran, Value::Bool(true) | Value::Int(1)) {
                return err("Fortran-ordered arrays are not supported");
            }
            let shape = shape
                .as_sequence()
                .ok_or_else(|| PickleError("array shape is not a tuple".into()))?
                .iter()
                .map(|d| match d {
                    Value::Int(n) if *n >= 0 => Ok(*n as usize),
                    _ => err("array dimension is not a natural number"),
                })
                .collect::<R<Vec<_>>>()?;
            let raw = match raw {
                Value::Bytes(b) => b.as_slice(),
                Value::Str(_) => return err("array data as text (protocol 0/1) is not supported"),
                _ => return err("object arrays are not supported"),
            };
            *a = array(dtype, shape, raw)?;
            Ok(())
        }
        Value::Dtype(d) => {
            // (version, byte order, ...)
            if let Some([_, Value::Str(order), ..]) = state.as_sequence() {
                d.big_endian = order == ">";
            }
            Ok(())
        }
        Value::Record { state: s, .. } => {
            *s = Some(Box::new(state));
            Ok(())
        }
        Value::Dict(items) => {
            if let Some(m) = state.as_mapping() {
                items.extend(m.iter().cloned());
            }
            Ok(())
        }
        _ => err("BUILD on a value that has no state"),
    }
}

/// Reads one pickle under [`Globals::AllowList`]. Every refusal names the opcode or the global at
/// fault.
pub fn read(data: &[u8]) -> R<Value> {
    read_at(data, 0, Globals::AllowList).map(|(v, _)| v)
}

/// Reads one pickle under [`Globals::Inert`] (a `torch.save` file's `data.pkl`).
pub fn read_inert(data: &[u8]) -> R<Value> {
    read_at(data, 0, Globals::Inert).map(|(v, _)| v)
}

/// An integer of `b.len()` little-endian two's complement bytes (`LONG1`, `LONG4`).
fn long(b: &[u8]) -> Value {
    if b.len() > 8 {
        return Value::BigInt(Rc::new(b.to_vec()));
    }
    let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
        [0xffu8; 8]
    } else {
        [0u8; 8]
    };
    buf[..b.len()].copy_from_slice(b);
    Value::Int(i64::from_le_bytes(buf))
}

/// Reads the pickle that starts at byte `start` of `data` (a stream may hold several, as the
/// pre-zip `torch.save` format does); returns it and the position after its `STOP`.
pub fn read_at(data: &[u8], start: usize, globals: Globals) -> R<(Value, usize)> {
    if start > data.len() {
        return err(format!("no pickle at byte {start}"));
    }
    let inert = globals == Globals::Inert;
    let mut r = Reader { data, pos: start };
    let mut m = Machine {
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        budget: MAX_NODES,
    };
    let mut next_memo = 0usize;
    loop {
        let at = r.pos;
        let op = r.u8()?;
        // Each opcode builds at most one new node.
        m.charge(1)?;
        match op {
            0x80 => {
                let proto = r.u8()?;
                if !(2..=5).contains(&proto) {
                    return err(format!("pickle protocol {proto}: only 2 to 5 are read"));
                }
            }
            0x95 => {
                r.u64()?; // FRAME: the frame length only groups opcodes.
            }
            b'.' => return Ok((m.pop()?, r.pos)),
            b'(' => m.marks.push(m.stack.len()),
            b'N' => m.push(Value::None),
            0x88 => m.push(Value::Bool(true)),
            0x89 => m.push(Value::Bool(false)),
            b'J' => {
                let b = r.take(4)?;
                m.push(Value::Int(
                    i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64
                ))
            }
            b'K' => {
                let v = r.u8()? as i64;
                m.push(Value::Int(v))
            }
            b'M' => {
                let v = r.u16()? as i64;
                m.push(Value::Int(v))
            }
            0x8a => {
                let n = r.u8()? as usize;
                let b = r.take(n)?;
                m.charge(n)?;
                m.push(long(b))
            }
            0x8b => {
                let n = r.u32()?;
                let b = r.take(n)?;
                m.charge(n)?;
                m.push(long(b))
            }
            b'G' => {
                let b = r.take(8)?;
                m.push(Value::Float(f64::from_be_bytes(
                    b.try_into().unwrap_or([0; 8]),
                )))
            }
            b'X' => {
                let n = r.u32()?;
                let s = r.utf8(n)?;
                m.push(Value::Str(s))
            }
            0x8c => {
                let n = r.u8()? as usize;
                let s = r.utf8(n)?;
                m.push(Value::Str(s))
            }
            0x8d => {
                let n = r.u64()?;
                let s = r.utf8(n)?;
                m.push(Value::Str(s))
            }
            // SHORT_BINSTRING / BINSTRING: Python 2 `str`, read as bytes-like text.
            b'U' | b'T' => {
                let n = if op == b'U' {
                    r.u8()? as usize
                } else {
                    r.u32()?
                };
                let b = r.take(n)?;
                m.push(match std::str::from_utf8(b) {
                    Ok(s) => Value::Str(s.to_string()),
                    Err(_) => Value::Bytes(Rc::new(b.to_vec())),
                })
            }
            b'C' | b'B' | 0x8e | 0x96 => {
                let n = match op {
                    b'C' => r.u8()? as usize,
                    b'B' => r.u32()?,
                    _ => r.u64()?,
                };
                let b = r.take(n)?;
                m.push(Value::Bytes(Rc::new(b.to_vec())))
            }
            b')' => m.push(Value::Tuple(Vec::new())),
            // POP: the top value, or the mark on top.
            b'0' => {
                if m.marks.last() == Some(&m.stack.len()) {
                    m.marks.pop();
                } else {
                    m.pop()?;
                }
            }
            b'1' => {
                m.pop_mark()?;
            }
            b'2' => {
                let top = match m.stack.last() {
                    Some((v, _)) if m.marks.last().is_none_or(|&k| k < m.stack.len()) => v.clone(),
                    _ => return err("DUP of nothing"),
                };
                m.charge_child(&top)?;
                m.push(top)
            }
            // EMPTY_SET / ADDITEMS (with APPENDS below) / FROZENSET: sets read as lists and tuples.
            0x8f => m.push(Value::List(Vec::new())),
            b']' => m.push(Value::List(Vec::new())),
            b'}' => m.push(Value::Dict(Vec::new())),
            // TUPLE, and FROZENSET read as a tuple.
            b't' | 0x91 => {
                let v = m.pop_items()?;
                m.push(Value::Tuple(v))
            }
            b'l' => {
                let v = m.pop_items()?;
                m.push(Value::List(v))
            }
            b'd' => {
                let v = m.pop_items()?;
                let mut d = Value::Dict(Vec::new());
                add_items(&mut d, v)?;
                m.push(d)
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(m.pop()?);
                }
                v.reverse();
                m.charge_children(&v)?;
                m.push(Value::Tuple(v))
            }
            b'a' => {
                let v = m.pop()?;
                m.charge_child(&v)?;
                m.with_top(|t| match t {
                    Value::List(l) => {
                        l.push(v);
                        Ok(())
                    }
                    // The items of a list subclass instance: not data we read.
                    Value::Record { .. } if inert => Ok(()),
                    _ => err("APPEND to something that is not a list"),
                })?
            }
            // APPENDS, and ADDITEMS (sets read as lists).
            b'e' | 0x90 => {
                let v = m.pop_items()?;
                m.with_top(|t| match t {
                    Value::List(l) => {
                        l.extend(v);
                        Ok(())
                    }
                    // The items of a list or set subclass instance: not data we read.
                    Value::Record { .. } if inert => Ok(()),
                    _ => err("APPENDS/ADDITEMS to something that is not a list or set"),
                })?
            }
            b's' => {
                let v = m.pop()?;
                let k = m.pop()?;
                m.charge_children([&k, &v])?;
                m.with_top(|t| add_items(t, vec![k, v]))?
            }
            b'u' => {
                let v = m.pop_items()?;
                m.with_top(|t| add_items(t, v))?
            }
            b'c' => {
                let module = r.line()?.to_string();
                let name = r.line()?.to_string();
                m.push(Value::Global(resolve_global(&module, &name, globals)?))
            }
            0x93 => {
                let name = m.pop()?;
                let module = m.pop()?;
                match (module, name) {
                    (Value::Str(module), Value::Str(name)) => {
                        m.push(Value::Global(resolve_global(&module, &name, globals)?))
                    }
                    _ => return err("STACK_GLOBAL names are not strings"),
                }
            }
            b'R' | 0x81 => {
                let args = m.pop()?;
                let callable = m.pop()?;
                let args = match args {
                    Value::Tuple(a) => a,
                    _ => return err("REDUCE/NEWOBJ arguments are not a tuple"),
                };
                match callable {
                    Value::Global(g) => {
                        let v = apply(g, args)?;
                        m.push(v)
                    }
                    _ => return err("REDUCE/NEWOBJ of something that is not an allowed global"),
                }
            }
            // NEWOBJ_EX: cls.__new__(cls, *args, **kwargs), the keyword arguments kept as items.
            0x92 => {
                let kwargs = m.pop()?;
                let args = m.pop()?;
                let callable = m.pop()?;
                let (Value::Tuple(args), Value::Global(g)) = (args, callable) else {
                    return err("NEWOBJ_EX of something that is not an allowed global");
                };
                let mut v = apply(g, args)?;
                if let (Value::Record { items, .. }, Some(kw)) = (&mut v, kwargs.as_mapping()) {
                    items.extend(kw.iter().cloned());
                }
                m.push(v)
            }
            // BINPERSID: torch.save's storage references.
            b'Q' if inert => {
                let pid = m.pop()?;
                m.charge_child(&pid)?;
                m.push(Value::Persistent(Box::new(pid)))
            }
            b'b' => {
                let state = m.pop()?;
                m.charge_child(&state)?;
                m.with_top(|t| build(t, state, globals))?
            }
            b'q' => {
                let slot = r.u8()? as usize;
                m.memoize(slot)?
            }
            b'r' => {
                let slot = r.u32()?;
                m.memoize(slot)?
            }
            0x94 => {
                m.memoize(next_memo)?;
                next_memo += 1;
            }
            b'h' => {
                let slot = r.u8()? as usize;
                m.get(slot)?
            }
            b'j' => {
                let slot = r.u32()?;
                m.get(slot)?
            }
            other => {
                return err(format!(
                    "refused opcode 0x{other:02x} ({:?}) at byte {at}",
                    other as char
                ))
            }
        }
    }
}
