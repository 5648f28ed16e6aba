//! `csrc/kernels.cpp`: the CUDA driver calls that load and launch flame's ahead-of-time compiled
//! kernels ([`load`], [`launch`]), and autograd nodes whose forward and backward are Rust functions
//! ([`Function`], [`apply`]), which is how those kernels join libtorch's autograd. The nodes work on
//! every device: the CPU tests drive them with libtorch ops.

use std::ffi::{CString, c_char, c_int, c_void};
use std::mem::ManuallyDrop;
use std::panic::{AssertUnwindSafe, catch_unwind};

use tch::Tensor;

use super::check;

unsafe extern "C" {
    fn flame_cu_load(
        device: c_int,
        image: *const c_void,
        entry: *const c_char,
        shared: u32,
        function: *mut *mut c_void,
    ) -> c_int;
    fn flame_cu_launch(
        device: c_int,
        function: *mut c_void,
        grid: *const u32,
        threads: u32,
        shared: u32,
        params: *mut *mut c_void,
    ) -> c_int;
    fn flame_cu_multiprocessors(device: c_int, count: *mut c_int) -> c_int;
    fn flame_rust_function(
        function: i64,
        op: i64,
        scalars: *const f64,
        n_scalars: usize,
        inputs: *const *mut c_void,
        n_inputs: usize,
        outputs: *mut c_void,
    ) -> c_int;
    fn flame_list_new() -> *mut c_void;
    fn flame_list_free(list: *mut c_void);
    fn flame_list_len(list: *mut c_void) -> usize;
    fn flame_list_get(list: *mut c_void, i: usize) -> *mut c_void;
    fn flame_list_push(list: *mut c_void, t: *mut c_void) -> c_int;
    fn flame_set_error(message: *const c_char);
}

/// A kernel loaded into a device's primary context (a `CUfunction`). Modules are never unloaded, so it
/// stays valid for the process's life, on any thread.
#[derive(Clone, Copy, Debug)]
pub struct CuFunction(*mut c_void);

// SAFETY: a CUfunction is a handle the driver lets any thread use within its context.
unsafe impl Send for CuFunction {}
// SAFETY: as above; launching does not mutate the handle.
unsafe impl Sync for CuFunction {}

/// Loads the cubin `image` on CUDA device `device` and finds its kernel `entry`, allowed `shared`
/// bytes of dynamic shared memory.
pub fn load(device: usize, image: &[u8], entry: &str, shared: u32) -> Result<CuFunction, String> {
    let entry = CString::new(entry).map_err(|e| e.to_string())?;
    let device = c_int::try_from(device).map_err(|e| e.to_string())?;
    let mut function = std::ptr::null_mut();
    // SAFETY: `image` outlives the call (the driver copies it); `function` is written on success.
    check(unsafe {
        flame_cu_load(
            device,
            image.as_ptr().cast(),
            entry.as_ptr(),
            shared,
            &raw mut function,
        )
    })?;
    Ok(CuFunction(function))
}

/// Launches `function` on `grid` blocks of `threads` threads on the stream torch computes on.
///
/// # Safety
/// `params` must point at one value per kernel parameter, of the parameter's type and in its order,
/// and every device pointer among them must stay valid until the kernel has run (torch's caching
/// allocator keeps a freed tensor's memory for work already queued on the stream).
pub unsafe fn launch(
    device: usize,
    function: CuFunction,
    grid: [u32; 3],
    threads: u32,
    shared: u32,
    params: &mut [*mut c_void],
) -> Result<(), String> {
    let device = c_int::try_from(device).map_err(|e| e.to_string())?;
    // SAFETY: the caller's contract above.
    check(unsafe {
        flame_cu_launch(
            device,
            function.0,
            grid.as_ptr(),
            threads,
            shared,
            params.as_mut_ptr(),
        )
    })
}

/// The number of multiprocessors of CUDA device `device`.
pub fn multiprocessors(device: usize) -> Result<u32, String> {
    let device = c_int::try_from(device).map_err(|e| e.to_string())?;
    let mut count: c_int = 0;
    // SAFETY: `count` is written on success.
    check(unsafe { flame_cu_multiprocessors(device, &raw mut count) })?;
    u32::try_from(count).map_err(|e| e.to_string())
}

/// What a forward pass gives back.
#[derive(Debug)]
pub struct Forward {
    /// The node's outputs.
    pub outputs: Vec<Tensor>,
    /// The tensors the backward pass will need.
    pub saved: Vec<Tensor>,
}

/// A [`Function`]'s backward pass.
pub type Backward = fn(&[f64], &[Tensor], &[Tensor]) -> Result<Vec<Option<Tensor>>, String>;

/// An operation with a hand-written backward pass, as a libtorch autograd node (a C++
/// `torch::autograd::Function`). `forward` gets the scalars and inputs of [`apply`]; `backward` the
/// scalars, the saved tensors and the outputs' gradients (zeros for an output that got none), and
/// returns one gradient per input (`None` for an input without one).
#[derive(Debug)]
pub struct Function {
    /// What errors call it.
    pub name: &'static str,
    /// The forward pass: (scalars, inputs).
    pub forward: fn(&[f64], &[Tensor]) -> Result<Forward, String>,
    /// The backward pass: (scalars, saved, gradients of the outputs).
    pub backward: Backward,
}

/// Runs `function` on `inputs` as one autograd node: the outputs' gradients flow back through its
/// `backward`. Errors (and panics) of either pass come back as `Err`, the backward pass's through
/// [`super::backward`].
pub fn apply(
    function: &'static Function,
    scalars: &[f64],
    inputs: &[&Tensor],
) -> Result<Vec<Tensor>, String> {
    let inputs: Vec<*mut c_void> = inputs
        .iter()
        .map(|t| t.as_ptr().cast_mut().cast())
        .collect();
    let outputs = List::new();
    // SAFETY: live tensors and scalars for the call; `trampoline` has the signature the C++ side
    // calls, and `function` is 'static, so the node may call it whenever its backward runs.
    check(unsafe {
        flame_rust_function(
            (trampoline as Trampoline as usize as u64).cast_signed(),
            (std::ptr::from_ref(function) as usize as u64).cast_signed(),
            scalars.as_ptr(),
            scalars.len(),
            inputs.as_ptr(),
            inputs.len(),
            outputs.0,
        )
    })?;
    outputs
        .tensors()
        .into_iter()
        .map(|t| t.ok_or_else(|| format!("{}: an undefined output", function.name)))
        .collect()
}

/// A C++ `std::vector<at::Tensor>`.
struct List(*mut c_void);

impl List {
    fn new() -> Self {
        // SAFETY: allocates an empty vector that Drop frees.
        Self(unsafe { flame_list_new() })
    }

    fn tensors(&self) -> Vec<Option<Tensor>> {
        // SAFETY: a live list.
        (0..unsafe { flame_list_len(self.0) })
            .map(|i| {
                // SAFETY: an index below the length; the result is a new handle (or null).
                let t = unsafe { flame_list_get(self.0, i) };
                // SAFETY: a fresh handle that the returned Tensor owns.
                (!t.is_null()).then(|| unsafe { Tensor::from_ptr(t.cast()) })
            })
            .collect()
    }
}

impl Drop for List {
    fn drop(&mut self) {
        // SAFETY: made by flame_list_new, freed once.
        unsafe { flame_list_free(self.0) }
    }
}

/// Appends to a list the C++ side owns.
fn push(list: *mut c_void, t: Option<&Tensor>) -> Result<(), String> {
    let t = t.map_or(std::ptr::null_mut(), |t| t.as_ptr().cast_mut().cast());
    // SAFETY: `list` is a live vector of the caller's; the tensor is copied into it.
    check(unsafe { flame_list_push(list, t) })
}

/// New handles to tensors the C++ side owns.
///
/// # Safety
/// `items` must point at `n` live `at::Tensor`s (or be dangling with `n` zero).
unsafe fn borrow(items: *const *mut c_void, n: usize) -> Vec<Tensor> {
    if n == 0 {
        return Vec::new();
    }
    // SAFETY: the caller's contract.
    unsafe { std::slice::from_raw_parts(items, n) }
        .iter()
        // SAFETY: a live tensor; ManuallyDrop leaves it to its owner, the shallow clone is ours.
        .map(|&t| ManuallyDrop::new(unsafe { Tensor::from_ptr(t.cast()) }).shallow_clone())
        .collect()
}

/// What the C++ node calls for both passes (`kernels.cpp`'s `rust_fn`).
type Trampoline = unsafe extern "C" fn(
    *const c_void,
    c_int,
    *const f64,
    usize,
    *const *mut c_void,
    usize,
    *const *mut c_void,
    usize,
    *mut c_void,
    *mut c_void,
) -> c_int;

/// The [`Trampoline`] of every [`Function`].
#[allow(clippy::too_many_arguments)] // one C signature for both passes
unsafe extern "C" fn trampoline(
    function: *const c_void,
    backward: c_int,
    scalars: *const f64,
    n_scalars: usize,
    a: *const *mut c_void,
    n_a: usize,
    b: *const *mut c_void,
    n_b: usize,
    outputs: *mut c_void,
    saved: *mut c_void,
) -> c_int {
    // SAFETY: `function` is the &'static Function that `apply` passed.
    let function = unsafe { &*function.cast::<Function>() };
    let run = || -> Result<(), String> {
        // SAFETY: the C++ side passes live arrays of the given lengths.
        let scalars = unsafe { borrow_scalars(scalars, n_scalars) };
        // SAFETY: as above.
        let (a, b) = unsafe { (borrow(a, n_a), borrow(b, n_b)) };
        if backward == 0 {
            let forward = (function.forward)(&scalars, &a)?;
            for t in &forward.outputs {
                push(outputs, Some(t))?;
            }
            for t in &forward.saved {
                push(saved, Some(t))?;
            }
        } else {
            for t in (function.backward)(&scalars, &a, &b)? {
                push(outputs, t.as_ref())?;
            }
        }
        Ok(())
    };
    let pass = if backward == 0 { "forward" } else { "backward" };
    let error = match catch_unwind(AssertUnwindSafe(run)) {
        Ok(Ok(())) => return 0,
        Ok(Err(e)) => format!("{} {pass}: {e}", function.name),
        Err(panic) => format!(
            "{} {pass} panicked: {}",
            function.name,
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)")
        ),
    };
    let error = CString::new(error.replace('\0', " ")).unwrap_or_default();
    // SAFETY: a NUL-terminated string the shim copies.
    unsafe { flame_set_error(error.as_ptr()) };
    -1
}

/// # Safety
/// `scalars` must point at `n` floats (or be dangling with `n` zero).
unsafe fn borrow_scalars(scalars: *const f64, n: usize) -> Vec<f64> {
    if n == 0 {
        return Vec::new();
    }
    // SAFETY: the caller's contract.
    unsafe { std::slice::from_raw_parts(scalars, n) }.to_vec()
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::{Forward, Function, apply};

    // y = s·x·w with its gradients by hand: dx = s·w·dy, dw = s·Σ x·dy over the rows.
    static SCALED_PRODUCT: Function = Function {
        name: "scaled product",
        forward: |s, inputs| {
            let (x, w) = (&inputs[0], &inputs[1]);
            Ok(Forward {
                outputs: vec![x * w * s[0], x.sum(Kind::Double)],
                saved: vec![x.shallow_clone(), w.shallow_clone()],
            })
        },
        backward: |s, saved, grads| {
            let (x, w, dy) = (&saved[0], &saved[1], &grads[0]);
            Ok(vec![
                Some(w * dy * s[0]),
                Some((x * dy).sum_dim_intlist(0, false, Kind::Double) * s[0]),
            ])
        },
    };

    static FAILING: Function = Function {
        name: "failing",
        forward: |_, inputs| {
            Ok(Forward {
                outputs: vec![&inputs[0] * 2.0],
                saved: vec![],
            })
        },
        backward: |_, _, _| Err("no backward here".into()),
    };

    static PANICKING: Function = Function {
        name: "panicking",
        forward: |_, _| panic!("a bug"),
        backward: |_, _, _| Ok(vec![]),
    };

    fn leaf(shape: &[i64]) -> Tensor {
        Tensor::randn(shape, (Kind::Double, Device::Cpu)).set_requires_grad(true)
    }

    #[test]
    fn a_rust_function_gets_the_gradients_autograd_gets() {
        let (x, w) = (leaf(&[5, 3]), leaf(&[3]));
        let dy = Tensor::randn([5, 3], (Kind::Double, Device::Cpu));
        let outputs = apply(&SCALED_PRODUCT, &[0.5], &[&x, &w]).unwrap();
        assert_eq!(outputs.len(), 2);
        // Only the first output gets a gradient: the second's arrives as zeros.
        (&outputs[0] * &dy).sum(Kind::Double).backward();
        let (dx, dw) = (x.grad(), w.grad());
        let (x2, w2) = (
            x.detach().set_requires_grad(true),
            w.detach().set_requires_grad(true),
        );
        (&x2 * &w2 * 0.5 * &dy).sum(Kind::Double).backward();
        assert!(dx.allclose(&x2.grad(), 1e-12, 1e-12, false));
        assert!(dw.allclose(&w2.grad(), 1e-12, 1e-12, false));
        assert!(outputs[0].allclose(&(&x * &w * 0.5), 1e-12, 1e-12, false));
    }

    #[test]
    fn a_failing_backward_is_an_error_naming_the_function() {
        let x = leaf(&[4]);
        let y = apply(&FAILING, &[], &[&x]).unwrap().remove(0);
        let error =
            crate::shim::backward(&y, &Tensor::ones([4], (Kind::Double, Device::Cpu))).unwrap_err();
        assert!(
            error.contains("failing backward: no backward here"),
            "{error}"
        );
    }

    #[test]
    fn a_panic_is_an_error_not_an_abort() {
        let x = leaf(&[4]);
        let error = apply(&PANICKING, &[], &[&x]).err().unwrap();
        assert!(
            error.contains("panicking forward panicked: a bug"),
            "{error}"
        );
    }
}
