//! fla-core's Triton kernels, compiled ahead of time into cubins by `tools/setup-kernels.sh`
//! (`tools/kernels/README.md`), found by name and specialisation in that build's `manifest.json` and
//! launched with named arguments that are checked against it: every parameter present, of its type,
//! tensors contiguous, 16-byte aligned and on the device (the cubins assume all of this).
//!
//! The build lives in `$FLAME_KERNELS`, else in the cache (`~/.cache/flame/kernels/<build>`); a
//! flame-train without it computes with the libtorch ops of [`super::gla`] and
//! [`super::delta_rule`] instead, and says so.
//!
//! The CPU tests open a build *recording* ([`Kernels::open_recording`]) and [`Kernels::install`] it
//! for the ops: its launches bind and check their arguments as a real launch does, then are written
//! down ([`Launch`], [`Kernels::take_launches`]) instead of run, on tensors of any device. That is how
//! the tests hold the ops' launches to those of fla's own wrappers without a GPU.

use std::collections::HashMap;
use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use serde::Deserialize;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

use crate::shim::kernels::{self as driver, CuFunction};

/// The build directory `tools/setup-kernels.sh` makes for this flame (fla-core and Triton pinned in
/// `tools/kernels/requirements.txt`).
pub const BUILD: &str = "fla-0.6.0-triton-3.7.1-sm90a";

/// An H100's multiprocessors: what [`Kernels::multiprocessors`] gives a recording build.
const HOPPER_MULTIPROCESSORS: i64 = 132;

/// [`Kernels::installed`]'s build, looked for at its first call (or set by [`Kernels::install`]).
static INSTALLED: OnceLock<Result<Kernels, String>> = OnceLock::new();

/// One compiled kernel variant, as `manifest.json` lists it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Entry {
    /// fla's module path and function name without `fla.`, as
    /// `ops.common.chunk_o.chunk_fwd_kernel_o`.
    pub kernel: String,
    /// The cubin's entry symbol.
    pub entry: String,
    /// The cubin's file name in the build directory.
    pub cubin: String,
    /// Every compile-time parameter's value (block sizes, switches, arguments passed as None).
    pub constexprs: serde_json::Map<String, Value>,
    /// The launch parameters in order: name and Triton type (`*bf16`, `*fp32`, `*i32`, `*i64`,
    /// `i32`, `i64`, `fp32`); the two scratch pointers Triton appends are not listed.
    pub args: Vec<(String, String)>,
    /// Warps per block.
    pub num_warps: u32,
    /// Bytes of dynamic shared memory.
    pub shared: u32,
    /// For an aligned twin (the build compiles one beside a variant that takes runtime ints which were
    /// multiples of 16 when traced): those ints, compiled as multiples of 16 as Triton's JIT compiles
    /// them. Empty for the general variant, which [`Kernels::find`] returns; [`Variant::launch`] runs
    /// the twin instead when each of these is a multiple of 16 at the launch.
    #[serde(default)]
    pub divisible: Vec<String>,
    /// Bytes of global and profiling scratch per block: flame passes none, so both must be zero.
    #[serde(default)]
    pub global_scratch: u64,
    #[serde(default)]
    #[allow(missing_docs)]
    pub profile_scratch: u64,
}

impl Entry {
    /// Whether this is a variant of `kernel` with `spec` (see [`Kernels::find`]).
    fn matches(&self, kernel: &str, spec: &[(&str, Value)]) -> bool {
        self.kernel == kernel
            && self.divisible.is_empty()
            && spec
                .iter()
                .all(|(name, value)| match self.constexprs.get(*name) {
                    Some(constexpr) => constexpr == value,
                    None => self
                        .args
                        .iter()
                        .any(|(arg, ty)| arg == name && value.as_str() == Some(ty.as_str())),
                })
    }
}

#[derive(Debug, Deserialize)]
struct Manifest {
    format: u32,
    kernels: Vec<Entry>,
}

/// A build's kernels, loaded onto a device at their first launch (or, opened by
/// [`Kernels::open_recording`], never loaded: their launches are recorded).
#[derive(Debug)]
pub struct Kernels {
    dir: PathBuf,
    entries: Vec<Entry>,
    /// Each entry's aligned twin, if the build has one.
    twins: Vec<Option<usize>>,
    loaded: Mutex<HashMap<(usize, usize), CuFunction>>,
    recording: Option<Mutex<Recording>>,
}

/// What a recording build has taken down since its last [`Kernels::take_launches`].
#[derive(Debug, Default)]
struct Recording {
    launches: Vec<Launch>,
    /// Each buffer's number by its address, in order of first use.
    buffers: HashMap<u64, usize>,
    /// Every tensor a recorded launch was given, kept so that no later tensor gets its address and
    /// with it another's number.
    kept: Vec<Tensor>,
}

/// A launch as a recording build takes it down instead of running it.
#[derive(Clone, Debug, PartialEq)]
pub struct Launch {
    /// The variant's manifest entry.
    pub entry: Entry,
    /// The grid, as the launch gave it.
    pub grid: [i64; 3],
    /// The value of each of the entry's parameters (`entry.args`), in order.
    pub args: Vec<Recorded>,
}

/// A parameter's value as a recording build takes it down.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Recorded {
    /// A tensor: its element count, and its buffer's number among those of the recording's launches
    /// (numbered by address in order of first use, so a view at a tensor's start is its buffer).
    Buffer {
        /// The tensor's element count.
        elements: i64,
        /// The buffer's number.
        buffer: usize,
    },
    /// An integer or float parameter (never [`Param::Pointer`]).
    Scalar(Param),
}

/// One argument of a launch.
#[derive(Clone, Copy, Debug)]
pub enum Arg<'t> {
    /// A pointer parameter: the tensor's data.
    Tensor(&'t Tensor),
    /// An `i32` parameter.
    I32(i32),
    /// An `i64` parameter.
    I64(i64),
    /// An `fp32` parameter.
    F32(f32),
}

/// A parameter's value as the driver takes it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Param {
    /// A device pointer.
    Pointer(u64),
    #[allow(missing_docs)]
    I32(i32),
    #[allow(missing_docs)]
    I64(i64),
    #[allow(missing_docs)]
    F32(f32),
}

impl Kernels {
    /// Reads the build in `dir`.
    pub fn open(dir: &Path) -> Result<Self, String> {
        let path = dir.join("manifest.json");
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if manifest.format != 1 {
            return Err(format!(
                "{}: format {}, this flame-train reads format 1",
                path.display(),
                manifest.format
            ));
        }
        for entry in &manifest.kernels {
            if entry.global_scratch != 0 || entry.profile_scratch != 0 {
                return Err(format!(
                    "{}: {} needs scratch memory, which flame does not pass",
                    path.display(),
                    entry.kernel
                ));
            }
        }
        let twins = twins(&manifest.kernels).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            entries: manifest.kernels,
            twins,
            loaded: Mutex::default(),
            recording: None,
        })
    }

    /// Reads the build in `dir` for the CPU tests: its launches check their arguments as
    /// [`Variant::launch`] does (names, types, contiguity, alignment, one device), on tensors of any
    /// device, and are then recorded, never run; [`Kernels::take_launches`] hands them over.
    pub fn open_recording(dir: &Path) -> Result<Self, String> {
        Ok(Self {
            recording: Some(Mutex::default()),
            ..Self::open(dir)?
        })
    }

    /// The launches recorded since the last call, in order; the buffers' numbering starts afresh.
    /// `Err` for a build not opened by [`Kernels::open_recording`].
    pub fn take_launches(&self) -> Result<Vec<Launch>, String> {
        let recording = self
            .recording
            .as_ref()
            .ok_or_else(|| format!("{}: not a recording build", self.dir.display()))?;
        let mut recording = recording.lock().map_err(|e| e.to_string())?;
        Ok(std::mem::take(&mut *recording).launches)
    }

    /// Makes `self` the build that [`Kernels::installed`] returns, for the rest of the process (the
    /// tests install a recording build so that the ops' launches are recorded); `Err` once a build is
    /// installed, or looked for, already.
    pub fn install(self) -> Result<&'static Self, String> {
        INSTALLED
            .set(Ok(self))
            .map_err(|_| "a kernel build is installed already".to_string())?;
        Self::installed()
    }

    /// The build flame-train uses: `$FLAME_KERNELS`, else the cache's [`BUILD`] (or the one
    /// [`Kernels::install`] installed); `Err` says why there is none.
    pub fn installed() -> Result<&'static Self, String> {
        INSTALLED
            .get_or_init(|| {
                let dir = match std::env::var_os("FLAME_KERNELS") {
                    Some(dir) => PathBuf::from(dir),
                    None => flame_preprocess::sample::cache_dir()
                        .map_err(|e| e.to_string())?
                        .join("kernels")
                        .join(BUILD),
                };
                Self::open(&dir)
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The one variant of `kernel` that has `spec`: each name a compile-time parameter of that value,
    /// or a launch parameter of that Triton type (`("h", json!("*fp32"))`, for variants that differ
    /// only in a buffer's element type).
    pub fn find(&self, kernel: &str, spec: &[(&str, Value)]) -> Result<Variant<'_>, String> {
        let matches: Vec<usize> = (0..self.entries.len())
            .filter(|&i| self.entries[i].matches(kernel, spec))
            .collect();
        let describe = || {
            spec.iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match matches[..] {
            [index] => Ok(Variant {
                kernels: self,
                index,
            }),
            [] => Err(format!(
                "{}: no build of {kernel} with {} (tools/setup-kernels.sh builds for the configs in configs/)",
                self.dir.display(),
                describe()
            )),
            _ => Err(format!(
                "{}: {} builds of {kernel} with {}: the lookup must name more",
                self.dir.display(),
                matches.len(),
                describe()
            )),
        }
    }

    /// The first variant of `kernel` that has `spec` (as [`Kernels::find`] matches it), for a `spec`
    /// that leaves out only parameters the kernel's result does not depend on.
    pub fn find_first(&self, kernel: &str, spec: &[(&str, Value)]) -> Result<Variant<'_>, String> {
        self.entries
            .iter()
            .position(|entry| entry.matches(kernel, spec))
            .map(|index| Variant {
                kernels: self,
                index,
            })
            .ok_or_else(|| format!("{}: no build of {kernel} with {spec:?}", self.dir.display()))
    }

    /// The multiprocessors of the device `x` is on, as fla's wrappers count them to size a grid: the
    /// driver's count on CUDA; for a recording build, an H100's 132 (the count the kernel build's fake
    /// Hopper gives fla's wrappers, `tools/kernels/hopper.py`).
    pub fn multiprocessors(&self, x: &Tensor) -> Result<i64, String> {
        static COUNTS: Mutex<Vec<(usize, u32)>> = Mutex::new(Vec::new());
        match (&self.recording, x.device()) {
            (Some(_), _) => Ok(HOPPER_MULTIPROCESSORS),
            (None, Device::Cuda(ordinal)) => {
                let mut counts = COUNTS.lock().map_err(|e| e.to_string())?;
                if let Some(&(_, count)) = counts.iter().find(|(device, _)| *device == ordinal) {
                    return Ok(i64::from(count));
                }
                let count = driver::multiprocessors(ordinal)?;
                counts.push((ordinal, count));
                Ok(i64::from(count))
            }
            (None, device) => Err(format!("{device:?} is not a CUDA device")),
        }
    }

    /// Records a launch of variant `index` whose arguments `bind` gave `values`.
    fn record(
        &self,
        recording: &Mutex<Recording>,
        index: usize,
        grid: [i64; 3],
        args: &[(&str, Arg<'_>)],
        values: &[Param],
    ) -> Result<(), String> {
        let mut recording = recording.lock().map_err(|e| e.to_string())?;
        let entry = &self.entries[index];
        let mut recorded = Vec::with_capacity(values.len());
        for ((name, _), value) in entry.args.iter().zip(values) {
            let Param::Pointer(address) = *value else {
                recorded.push(Recorded::Scalar(*value));
                continue;
            };
            let tensor = args
                .iter()
                .find_map(|(arg, value)| match value {
                    Arg::Tensor(t) if arg == name => Some(*t),
                    _ => None,
                })
                .expect("bind binds pointers to tensor arguments");
            let next = recording.buffers.len();
            let buffer = *recording.buffers.entry(address).or_insert(next);
            if buffer == next {
                recording.kept.push(tensor.shallow_clone());
            }
            recorded.push(Recorded::Buffer {
                elements: tensor.numel().try_into().map_err(|e| format!("{e}"))?,
                buffer,
            });
        }
        recording.launches.push(Launch {
            entry: entry.clone(),
            grid,
            args: recorded,
        });
        Ok(())
    }

    fn function(&self, index: usize, device: usize) -> Result<CuFunction, String> {
        let mut loaded = self.loaded.lock().map_err(|e| e.to_string())?;
        if let Some(&function) = loaded.get(&(index, device)) {
            return Ok(function);
        }
        let entry = &self.entries[index];
        let path = self.dir.join(&entry.cubin);
        let image = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let function = driver::load(device, &image, &entry.entry, entry.shared)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        loaded.insert((index, device), function);
        Ok(function)
    }
}

/// One kernel variant of a build.
#[derive(Clone, Copy, Debug)]
pub struct Variant<'k> {
    kernels: &'k Kernels,
    index: usize,
}

impl Variant<'_> {
    /// The manifest's entry.
    pub fn entry(&self) -> &Entry {
        &self.kernels.entries[self.index]
    }

    /// The integer compile-time parameter `name` (a block size, say).
    pub fn constexpr(&self, name: &str) -> Result<i64, String> {
        let entry = self.entry();
        entry
            .constexprs
            .get(name)
            .and_then(Value::as_i64)
            .ok_or_else(|| format!("{}: no integer constexpr {name}", entry.kernel))
    }

    /// Launches the kernel on `grid` blocks with `args` (by name, in any order) on the device of its
    /// tensor arguments; in a recording build ([`Kernels::open_recording`]), checks and records the
    /// launch instead, on any device.
    pub fn launch(&self, grid: [i64; 3], args: &[(&str, Arg<'_>)]) -> Result<(), String> {
        let entry = self.entry();
        let device = args
            .iter()
            .find_map(|(_, arg)| match arg {
                Arg::Tensor(t) => Some(t.device()),
                _ => None,
            })
            .ok_or_else(|| format!("{}: no tensor argument", entry.kernel))?;
        let target = match (&self.kernels.recording, device) {
            (Some(recording), _) => Target::Recording(recording),
            (None, Device::Cuda(ordinal)) => Target::Device(ordinal),
            (None, device) => {
                return Err(format!("{}: tensors on {device:?}, not CUDA", entry.kernel));
            }
        };
        for (name, arg) in args {
            if let Arg::Tensor(t) = arg
                && t.device() != device
            {
                return Err(format!(
                    "{}: {name} is on {:?}, not {device:?}",
                    entry.kernel,
                    t.device()
                ));
            }
        }
        let mut values = bind(entry, args)?;
        let blocks = grid.map(|g| u32::try_from(g).unwrap_or(0));
        if blocks.contains(&0) {
            return Err(format!("{}: grid out of range", entry.kernel));
        }
        let index = self.kernels.twins[self.index]
            .filter(|&twin| aligned(&self.kernels.entries[twin], &values))
            .unwrap_or(self.index);
        let entry = &self.kernels.entries[index];
        let ordinal = match target {
            Target::Device(ordinal) => ordinal,
            Target::Recording(recording) => {
                return self.kernels.record(recording, index, grid, args, &values);
            }
        };
        // Triton's two scratch pointers, unused (checked when the build was opened).
        values.extend([Param::Pointer(0), Param::Pointer(0)]);
        let mut params: Vec<*mut c_void> = values
            .iter_mut()
            .map(|value| match value {
                Param::Pointer(p) => std::ptr::from_mut(p).cast(),
                Param::I32(v) => std::ptr::from_mut(v).cast(),
                Param::I64(v) => std::ptr::from_mut(v).cast(),
                Param::F32(v) => std::ptr::from_mut(v).cast(),
            })
            .collect();
        let function = self.kernels.function(index, ordinal)?;
        // SAFETY: `bind` put one value per parameter in the manifest's order and types, the tensors
        // are contiguous, aligned and on the launch's device, and they outlive the queued kernel
        // (torch's caching allocator reuses freed memory only in stream order).
        unsafe {
            driver::launch(
                ordinal,
                function,
                blocks,
                32 * entry.num_warps,
                entry.shared,
                &mut params,
            )
        }
        .map_err(|e| format!("{}: {e}", entry.kernel))
    }
}

/// Each entry's aligned twin: the entry of the same kernel, constexprs and arguments whose
/// [`Entry::divisible`] is not empty (none for a twin itself). `Err` for a twin without its general
/// entry, two twins of one, or `divisible` naming anything but integer arguments.
fn twins(entries: &[Entry]) -> Result<Vec<Option<usize>>, String> {
    let mut twins = vec![None; entries.len()];
    for (index, twin) in entries.iter().enumerate() {
        if twin.divisible.is_empty() {
            continue;
        }
        let ints = |name: &String| {
            twin.args
                .iter()
                .any(|(arg, ty)| arg == name && (ty == "i32" || ty == "i64"))
        };
        if !twin.divisible.iter().all(ints) {
            return Err(format!(
                "{} ({}): divisible {:?} names a parameter that is not an integer argument",
                twin.cubin, twin.kernel, twin.divisible
            ));
        }
        let general = entries.iter().position(|e| {
            e.divisible.is_empty()
                && e.kernel == twin.kernel
                && e.constexprs == twin.constexprs
                && e.args == twin.args
        });
        match general.map(|g| (g, twins[g].replace(index))) {
            Some((_, None)) => {}
            Some((_, Some(_))) => {
                return Err(format!(
                    "{}: a second aligned twin of one variant",
                    twin.cubin
                ));
            }
            None => {
                return Err(format!(
                    "{} ({}): an aligned twin without its general variant",
                    twin.cubin, twin.kernel
                ));
            }
        }
    }
    Ok(twins)
}

/// Whether the launch `values` (in `twin`'s argument order) give each of `twin`'s divisible integers a
/// multiple of 16.
fn aligned(twin: &Entry, values: &[Param]) -> bool {
    twin.args.iter().zip(values).all(|((name, _), value)| {
        !twin.divisible.contains(name)
            || match *value {
                Param::I32(v) => v % 16 == 0,
                Param::I64(v) => v % 16 == 0,
                _ => false,
            }
    })
}

/// Where a launch goes: to a CUDA device, or into a recording build's record.
enum Target<'r> {
    Device(usize),
    Recording(&'r Mutex<Recording>),
}

/// The parameter values of a launch of `entry`, in its order: every parameter given once, each
/// argument a parameter, of its type; tensors contiguous and 16-byte aligned.
pub fn bind(entry: &Entry, args: &[(&str, Arg<'_>)]) -> Result<Vec<Param>, String> {
    let kernel = &entry.kernel;
    for (name, _) in args {
        if !entry.args.iter().any(|(param, _)| param == name) {
            return Err(format!("{kernel}: no parameter {name} in this build"));
        }
    }
    entry
        .args
        .iter()
        .map(|(name, ty)| {
            let mut given = args.iter().filter(|(arg, _)| arg == name);
            let (Some((_, arg)), None) = (given.next(), given.next()) else {
                return Err(format!("{kernel}: parameter {name} must be given once"));
            };
            match (ty.as_str(), *arg) {
                ("i32", Arg::I32(v)) => Ok(Param::I32(v)),
                ("i64", Arg::I64(v)) => Ok(Param::I64(v)),
                ("fp32", Arg::F32(v)) => Ok(Param::F32(v)),
                (pointer, Arg::Tensor(t)) if pointer.starts_with('*') => {
                    tensor_param(kernel, name, &pointer[1..], t)
                }
                (ty, arg) => Err(format!("{kernel}: {name} is {ty}, given {arg:?}")),
            }
        })
        .collect()
}

fn tensor_param(kernel: &str, name: &str, element: &str, t: &Tensor) -> Result<Param, String> {
    let kind = match element {
        "bf16" => Kind::BFloat16,
        "fp32" => Kind::Float,
        "i32" => Kind::Int,
        "i64" => Kind::Int64,
        other => {
            return Err(format!(
                "{kernel}: {name} has element type {other}, unknown here"
            ));
        }
    };
    if t.kind() != kind {
        return Err(format!(
            "{kernel}: {name} must be {kind:?}, is {:?}",
            t.kind()
        ));
    }
    if !t.is_contiguous() {
        return Err(format!("{kernel}: {name} must be contiguous"));
    }
    let address = t.data_ptr() as u64;
    if !address.is_multiple_of(16) {
        return Err(format!("{kernel}: {name} is not 16-byte aligned"));
    }
    Ok(Param::Pointer(address))
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tch::{Device, Kind, Tensor};

    use super::{Arg, Kernels, Param, Recorded, bind};

    fn build() -> (tempfile::TempDir, Kernels) {
        let dir = tempfile::tempdir().unwrap();
        let entry = |bv: u32, use_g: bool| {
            json!({"kernel": "ops.common.chunk_o.chunk_fwd_kernel_o", "entry": "chunk_fwd_kernel_o",
                   "cubin": format!("{bv}{use_g}.cubin"),
                   "constexprs": {"H": 8, "K": 128, "BV": bv, "USE_G": use_g, "g": null},
                   "args": [["q", "*bf16"], ["cu_seqlens", "*i32"], ["scale", "fp32"], ["T", "i32"]],
                   "num_warps": 4, "num_stages": 2, "shared": 1024,
                   "global_scratch": 0, "profile_scratch": 0, "config_source": "tuned"})
        };
        let manifest = json!({"format": 1, "fla": "0.6.0", "triton": "3.7.1", "target": "sm_90a",
                              "kernels": [entry(64, false), entry(64, true)]});
        std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
        let kernels = Kernels::open(dir.path()).unwrap();
        (dir, kernels)
    }

    #[test]
    fn a_variant_is_found_by_its_specialisation_and_only_if_one_matches() {
        let (_dir, kernels) = build();
        let found = kernels
            .find(
                "ops.common.chunk_o.chunk_fwd_kernel_o",
                &[("USE_G", json!(true)), ("K", json!(128))],
            )
            .unwrap();
        assert_eq!(found.entry().cubin, "64true.cubin");
        assert_eq!(found.constexpr("BV").unwrap(), 64);
        // A launch parameter matches by its Triton type.
        let typed = kernels.find(
            "ops.common.chunk_o.chunk_fwd_kernel_o",
            &[("USE_G", json!(true)), ("q", json!("*bf16"))],
        );
        assert_eq!(typed.unwrap().entry().cubin, "64true.cubin");
        let mistyped = kernels.find(
            "ops.common.chunk_o.chunk_fwd_kernel_o",
            &[("USE_G", json!(true)), ("q", json!("*fp32"))],
        );
        assert!(mistyped.unwrap_err().contains("no build"));
        let both = kernels.find("ops.common.chunk_o.chunk_fwd_kernel_o", &[("H", json!(8))]);
        assert!(both.unwrap_err().contains("2 builds"));
        let none = kernels.find(
            "ops.common.chunk_o.chunk_fwd_kernel_o",
            &[("K", json!(256))],
        );
        assert!(
            none.unwrap_err()
                .contains("no build of ops.common.chunk_o.chunk_fwd_kernel_o with K=256")
        );
    }

    #[test]
    fn arguments_bind_by_name_in_the_builds_order_and_are_checked() {
        let (_dir, kernels) = build();
        let entry = kernels
            .find(
                "ops.common.chunk_o.chunk_fwd_kernel_o",
                &[("USE_G", json!(false))],
            )
            .unwrap();
        let entry = entry.entry();
        let q = Tensor::zeros([4, 8], (Kind::BFloat16, Device::Cpu));
        let cu = Tensor::zeros([3], (Kind::Int, Device::Cpu));
        let params = bind(
            entry,
            &[
                ("T", Arg::I32(7)),
                ("cu_seqlens", Arg::Tensor(&cu)),
                ("scale", Arg::F32(0.5)),
                ("q", Arg::Tensor(&q)),
            ],
        )
        .unwrap();
        assert_eq!(params[0], Param::Pointer(q.data_ptr() as u64));
        assert_eq!(params[1], Param::Pointer(cu.data_ptr() as u64));
        assert_eq!(params[2..], [Param::F32(0.5), Param::I32(7)]);

        let base = [
            ("T", Arg::I32(7)),
            ("cu_seqlens", Arg::Tensor(&cu)),
            ("scale", Arg::F32(0.5)),
        ];
        let with = |extra: (&'static str, Arg<'_>)| {
            let mut args = base.to_vec();
            args.push(extra);
            bind(entry, &args).unwrap_err()
        };
        assert!(
            bind(entry, &base)
                .unwrap_err()
                .contains("q must be given once")
        );
        let float = q.to_kind(Kind::Float);
        assert!(with(("q", Arg::Tensor(&float))).contains("q must be BFloat16, is Float"));
        let strided = Tensor::zeros([8, 4], (Kind::BFloat16, Device::Cpu)).tr();
        assert!(with(("q", Arg::Tensor(&strided))).contains("q must be contiguous"));
        let shifted = Tensor::zeros([40], (Kind::BFloat16, Device::Cpu)).narrow(0, 1, 32);
        assert!(with(("q", Arg::Tensor(&shifted))).contains("q is not 16-byte aligned"));
        assert!(with(("g", Arg::Tensor(&q))).contains("no parameter g"));
        let mut wrong = base.to_vec();
        wrong[0] = ("T", Arg::I64(7));
        wrong.push(("q", Arg::Tensor(&q)));
        assert!(
            bind(entry, &wrong)
                .unwrap_err()
                .contains("T is i32, given I64(7)")
        );
    }

    #[test]
    fn a_launch_refuses_tensors_off_cuda() {
        let (_dir, kernels) = build();
        let variant = kernels
            .find(
                "ops.common.chunk_o.chunk_fwd_kernel_o",
                &[("USE_G", json!(false))],
            )
            .unwrap();
        let q = Tensor::zeros([4, 8], (Kind::BFloat16, Device::Cpu));
        let error = variant
            .launch([1, 1, 1], &[("q", Arg::Tensor(&q))])
            .unwrap_err();
        assert!(error.contains("not CUDA"), "{error}");
    }

    /// A variant's aligned twin runs exactly when its divisible integers are multiples of 16 at the
    /// launch; `find` never returns a twin, and a twin without its general variant is refused.
    #[test]
    fn the_aligned_twin_runs_only_on_multiples_of_16() {
        let dir = tempfile::tempdir().unwrap();
        let entry = |cubin: &str, divisible: &[&str]| {
            json!({"kernel": "modules.causal_conv1d.ops.causal_conv1d_fwd_kernel",
                   "entry": "causal_conv1d_fwd_kernel", "cubin": cubin, "constexprs": {"D": 64},
                   "args": [["x", "*bf16"], ["T", "i32"], ["stride_x_t", "i32"]],
                   "divisible": divisible, "num_warps": 4, "num_stages": 3, "shared": 0,
                   "global_scratch": 0, "profile_scratch": 0, "config_source": "fixed"})
        };
        let write = |kernels: serde_json::Value| {
            let manifest = json!({"format": 1, "fla": "0.6.0", "triton": "3.7.1",
                                  "target": "sm_90a", "kernels": kernels});
            std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
        };
        write(json!([
            entry("twin.cubin", &["T", "stride_x_t"]),
            entry("general.cubin", &[])
        ]));
        let kernels = Kernels::open_recording(dir.path()).unwrap();
        let variant = kernels
            .find("modules.causal_conv1d.ops.causal_conv1d_fwd_kernel", &[])
            .unwrap();
        assert_eq!(variant.entry().cubin, "general.cubin");
        let x = Tensor::zeros([4, 8], (Kind::BFloat16, Device::Cpu));
        for (t, stride, cubin) in [
            (32, 64, "twin.cubin"),
            (33, 64, "general.cubin"),
            (32, 8, "general.cubin"),
            (0, 4096, "twin.cubin"),
        ] {
            let args = [
                ("x", Arg::Tensor(&x)),
                ("T", Arg::I32(t)),
                ("stride_x_t", Arg::I32(stride)),
            ];
            variant.launch([1, 1, 1], &args).unwrap();
            let launches = kernels.take_launches().unwrap();
            assert_eq!(launches[0].entry.cubin, cubin, "T {t}, stride {stride}");
        }
        write(json!([entry("twin.cubin", &["T"])]));
        let error = Kernels::open(dir.path()).unwrap_err();
        assert!(error.contains("without its general variant"), "{error}");
        write(json!([
            entry("twin.cubin", &["x"]),
            entry("general.cubin", &[])
        ]));
        let error = Kernels::open(dir.path()).unwrap_err();
        assert!(error.contains("not an integer argument"), "{error}");
    }

    #[test]
    fn a_recording_build_checks_and_records_launches_on_any_device() {
        let (dir, kernels) = build();
        assert!(
            kernels
                .take_launches()
                .unwrap_err()
                .contains("not a recording build")
        );
        let kernels = Kernels::open_recording(dir.path()).unwrap();
        let variant = kernels
            .find(
                "ops.common.chunk_o.chunk_fwd_kernel_o",
                &[("USE_G", json!(true))],
            )
            .unwrap();
        let q = Tensor::zeros([4, 8], (Kind::BFloat16, Device::Cpu));
        let (cu, other) = (
            Tensor::zeros([3], (Kind::Int, Device::Cpu)),
            Tensor::zeros([3], (Kind::Int, Device::Cpu)),
        );
        let args = |q: Arg<'_>, cu: &Tensor| {
            variant.launch(
                [2, 3, 1],
                &[
                    ("q", q),
                    ("cu_seqlens", Arg::Tensor(cu)),
                    ("scale", Arg::F32(0.5)),
                    ("T", Arg::I32(4)),
                ],
            )
        };
        args(Arg::Tensor(&q), &cu).unwrap();
        // A view at the tensor's start is its buffer; another tensor is another.
        args(Arg::Tensor(&q.view([32])), &other).unwrap();
        // The arguments are checked as for a real launch, and a refused launch is not recorded.
        let float = q.to_kind(Kind::Float);
        let error = args(Arg::Tensor(&float), &cu).unwrap_err();
        assert!(error.contains("q must be BFloat16"), "{error}");
        let error = variant
            .launch([0, 1, 1], &[("q", Arg::Tensor(&q))])
            .unwrap_err();
        assert!(error.contains("must be given once"), "{error}");
        let launches = kernels.take_launches().unwrap();
        assert_eq!(launches.len(), 2);
        assert_eq!(launches[0].entry.cubin, "64true.cubin");
        assert_eq!(launches[0].grid, [2, 3, 1]);
        let buffer = |elements, buffer| Recorded::Buffer { elements, buffer };
        let scalars = [
            Recorded::Scalar(Param::F32(0.5)),
            Recorded::Scalar(Param::I32(4)),
        ];
        assert_eq!(launches[0].args[..2], [buffer(32, 0), buffer(3, 1)]);
        assert_eq!(launches[1].args[..2], [buffer(32, 0), buffer(3, 2)]);
        assert_eq!(launches[1].args[2..], scalars);
        // Taken: the record and its numbering start afresh.
        args(Arg::Tensor(&float.to_kind(Kind::BFloat16)), &other).unwrap();
        let launches = kernels.take_launches().unwrap();
        assert_eq!(launches[0].args[..2], [buffer(32, 0), buffer(3, 1)]);
    }

    #[test]
    fn a_manifest_of_another_format_or_with_scratch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        std::fs::write(&path, json!({"format": 2, "kernels": []}).to_string()).unwrap();
        assert!(Kernels::open(dir.path()).unwrap_err().contains("format 2"));
        std::fs::write(&path, "{").unwrap();
        assert!(
            Kernels::open(dir.path())
                .unwrap_err()
                .contains("manifest.json")
        );
        let scratch = json!({"kernel": "k", "entry": "k", "cubin": "k.cubin", "constexprs": {},
                             "args": [], "num_warps": 1, "shared": 0, "global_scratch": 128});
        std::fs::write(
            &path,
            json!({"format": 1, "kernels": [scratch]}).to_string(),
        )
        .unwrap();
        assert!(
            Kernels::open(dir.path())
                .unwrap_err()
                .contains("k needs scratch memory")
        );
    }
}
