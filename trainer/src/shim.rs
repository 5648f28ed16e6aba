//! The C++ shim (`csrc/shim.cpp`): libtorch calls that tch 0.24 does not bind.

use std::ffi::{CStr, c_char, c_int, c_void};

use tch::Tensor;

pub mod kernels;

unsafe extern "C" {
    fn flame_shim_error() -> *const c_char;
    fn flame_autocast_cuda_bf16() -> c_int;
    fn flame_allow_tf32(on: c_int) -> c_int;
    fn flame_set_deterministic(on: c_int) -> c_int;
    fn flame_deterministic() -> c_int;
    fn flame_profiler_start(cuda: c_int) -> c_int;
    fn flame_profiler_stop(path: *const std::ffi::c_char) -> c_int;
    fn flame_autocast_enter() -> c_int;
    fn flame_grad_norm(params: *const *mut c_void, n: usize) -> *mut c_void;
    fn flame_clip_grads(
        params: *const *mut c_void,
        n: usize,
        norm: *mut c_void,
        max_norm: f64,
    ) -> c_int;
    fn flame_zero_grads(params: *const *mut c_void, n: usize) -> c_int;
    fn flame_flash_varlen(
        q: *mut c_void,
        k: *mut c_void,
        v: *mut c_void,
        cu_seqlens: *mut c_void,
        max_seqlen: i64,
    ) -> *mut c_void;
    fn flame_autocast_exit() -> c_int;
    fn flame_pin_memory(t: *mut c_void) -> *mut c_void;
    fn flame_backward(outs: *const *mut c_void, grads: *const *mut c_void, n: usize) -> c_int;
    fn flame_cuda_memory(device: c_int, used: *mut usize, total: *mut usize) -> c_int;
    fn flame_cuda_device_name(device: c_int, name: *mut c_char, len: c_int) -> c_int;
    fn flame_fused_adamw(
        params: *const *mut c_void,
        grads: *const *mut c_void,
        exp_avgs: *const *mut c_void,
        exp_avg_sqs: *const *mut c_void,
        steps: *const *mut c_void,
        n: usize,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
    ) -> c_int;
}

fn check(rc: c_int) -> Result<(), String> {
    if rc == 0 {
        return Ok(());
    }
    // SAFETY: the shim returns a pointer to its thread-local, NUL-terminated last error.
    let message = unsafe { CStr::from_ptr(flame_shim_error()) };
    Err(message.to_string_lossy().into_owned())
}

/// Makes CUDA autocast (`tch::autocast`) compute in bfloat16 instead of its default float16.
pub fn autocast_cuda_bf16() -> Result<(), String> {
    // SAFETY: no arguments; errors come back as -1.
    check(unsafe { flame_autocast_cuda_bf16() })
}

/// Allows TF32 for float32 matrix products on CUDA.
pub fn allow_tf32(on: bool) -> Result<(), String> {
    // SAFETY: a plain integer argument; errors come back as -1.
    check(unsafe { flame_allow_tf32(c_int::from(on)) })
}

/// Makes libtorch run deterministic algorithms only (an op without one is an error naming it), with
/// cuDNN's deterministic algorithms and without cuDNN benchmarking: torchtitan's
/// `--training.deterministic`. cuBLAS also needs `CUBLAS_WORKSPACE_CONFIG` set before its first use.
pub fn set_deterministic(on: bool) -> Result<(), String> {
    // SAFETY: a plain integer argument; errors come back as -1.
    check(unsafe { flame_set_deterministic(c_int::from(on)) })
}

/// Whether libtorch runs deterministic algorithms only.
pub fn deterministic() -> bool {
    // SAFETY: no arguments; reads a flag of libtorch's global context.
    unsafe { flame_deterministic() == 1 }
}

/// Starts libtorch's profiler: operators on the CPU with their input shapes, and CUDA's kernels when
/// `cuda`.
pub fn profiler_start(cuda: bool) -> Result<(), String> {
    // SAFETY: a plain integer argument; errors come back as -1.
    check(unsafe { flame_profiler_start(c_int::from(cuda)) })
}

/// Stops the profiler [`profiler_start`] started and writes what it recorded to `path` as a Chrome
/// trace (JSON).
pub fn profiler_stop(path: &std::path::Path) -> Result<(), String> {
    let path =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: a NUL-terminated path that outlives the call.
    check(unsafe { flame_profiler_stop(path.as_ptr()) })
}

fn pointers(tensors: &[Tensor]) -> Vec<*mut c_void> {
    tensors
        .iter()
        .map(|t| t.as_ptr().cast_mut().cast())
        .collect()
}

/// The global L2 norm of the gradients of `params`, on their device (multi-tensor kernels).
pub fn grad_norm(params: &[Tensor]) -> Result<Tensor, String> {
    let p = pointers(params);
    // SAFETY: live tensors for the call; the result is a new `at::Tensor` that the returned Tensor owns.
    let out = unsafe { flame_grad_norm(p.as_ptr(), p.len()) };
    if out.is_null() {
        check(-1)?;
    }
    // SAFETY: a fresh, owned tensor from the shim.
    Ok(unsafe { Tensor::from_ptr(out.cast()) })
}

/// Scales the gradients of `params` so their global norm `norm` is at most `max_norm`.
pub fn clip_grads(params: &[Tensor], norm: &Tensor, max_norm: f64) -> Result<(), String> {
    let p = pointers(params);
    // SAFETY: live tensors for the call.
    check(unsafe {
        flame_clip_grads(
            p.as_ptr(),
            p.len(),
            norm.as_ptr().cast_mut().cast(),
            max_norm,
        )
    })
}

/// Causal flash attention over packed sequences: `q` `[total, heads, d]`, `k` and `v`
/// `[total, kv_heads, d]` (bf16), `cu_seqlens` int32 on the device. Autograd-aware.
pub fn flash_varlen(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_seqlens: &Tensor,
    max_seqlen: i64,
) -> Result<Tensor, String> {
    let ptr = |t: &Tensor| t.as_ptr().cast_mut().cast();
    // SAFETY: live tensors for the call; the result is a new tensor the returned Tensor owns.
    let out = unsafe { flame_flash_varlen(ptr(q), ptr(k), ptr(v), ptr(cu_seqlens), max_seqlen) };
    if out.is_null() {
        check(-1)?;
    }
    // SAFETY: a fresh, owned tensor from the shim.
    Ok(unsafe { Tensor::from_ptr(out.cast()) })
}

/// Drops the gradients of `params` (set to none).
pub fn zero_grads(params: &[Tensor]) -> Result<(), String> {
    let p = pointers(params);
    // SAFETY: live tensors for the call.
    check(unsafe { flame_zero_grads(p.as_ptr(), p.len()) })
}

/// Runs `f` under CUDA autocast (bfloat16 after [`autocast_cuda_bf16`]) when `enabled`.
pub fn autocast<T>(enabled: bool, f: impl FnOnce() -> T) -> Result<T, String> {
    if !enabled {
        return Ok(f());
    }
    // SAFETY: no arguments; errors come back as -1.
    check(unsafe { flame_autocast_enter() })?;
    let out = f();
    // SAFETY: as above; pairs with the enter.
    check(unsafe { flame_autocast_exit() })?;
    Ok(out)
}

/// One fused AdamW update (`torch.optim.AdamW(fused=True)`) of `params` with their gradients, moments
/// and float32 step counters (incremented here).
///
/// # Panics
/// If the slices differ in length.
#[allow(clippy::too_many_arguments)]
pub fn fused_adamw(
    params: &[Tensor],
    grads: &[Tensor],
    exp_avgs: &[Tensor],
    exp_avg_sqs: &[Tensor],
    steps: &[Tensor],
    lr: f64,
    (beta1, beta2): (f64, f64),
    weight_decay: f64,
    eps: f64,
) -> Result<(), String> {
    let count = params.len();
    assert!(
        [grads.len(), exp_avgs.len(), exp_avg_sqs.len(), steps.len()]
            .iter()
            .all(|&l| l == count)
    );
    let (params, grads, moments, squares, counters) = (
        pointers(params),
        pointers(grads),
        pointers(exp_avgs),
        pointers(exp_avg_sqs),
        pointers(steps),
    );
    // SAFETY: every pointer is a live tch tensor for the duration of the call; count is their number.
    check(unsafe {
        flame_fused_adamw(
            params.as_ptr(),
            grads.as_ptr(),
            moments.as_ptr(),
            squares.as_ptr(),
            counters.as_ptr(),
            count,
            lr,
            beta1,
            beta2,
            weight_decay,
            eps,
        )
    })
}

/// Backpropagates `grad` (the gradient of some loss with respect to `out`) through `out`'s graph,
/// accumulating into the leaves' gradients.
pub fn backward(out: &Tensor, grad: &Tensor) -> Result<(), String> {
    backward_many(&[out], &[grad])
}

/// Backpropagates each `grads[i]` (the gradient of some loss with respect to `outs[i]`) in one pass
/// through the outputs' graphs, accumulating into the leaves' gradients.
pub fn backward_many(outs: &[&Tensor], grads: &[&Tensor]) -> Result<(), String> {
    if outs.len() != grads.len() {
        return Err(format!(
            "backward: {} outputs and {} gradients",
            outs.len(),
            grads.len()
        ));
    }
    let pointers = |ts: &[&Tensor]| -> Vec<*mut c_void> {
        ts.iter().map(|t| t.as_ptr().cast_mut().cast()).collect()
    };
    let (outs, grads) = (pointers(outs), pointers(grads));
    // SAFETY: live tensors for the duration of the call, `n` of each.
    check(unsafe { flame_backward(outs.as_ptr(), grads.as_ptr(), outs.len()) })
}

/// Bytes of device memory in use and in all on CUDA device `device` (as `nvidia-smi` counts them);
/// `None` when no CUDA runtime is loaded.
pub fn cuda_memory(device: usize) -> Option<(u64, u64)> {
    let (mut used, mut total) = (0usize, 0usize);
    let device = c_int::try_from(device).ok()?;
    // SAFETY: two live out-pointers; the shim writes them only on success.
    let rc = unsafe { flame_cuda_memory(device, &raw mut used, &raw mut total) };
    (rc == 0).then_some((used as u64, total as u64))
}

/// The name of CUDA device `device` (`NVIDIA H100 80GB HBM3`); `None` without a CUDA driver.
pub fn cuda_device_name(device: usize) -> Option<String> {
    let mut name = [0 as c_char; 256];
    let device = c_int::try_from(device).ok()?;
    // SAFETY: a buffer of the length passed; the driver NUL-terminates within it.
    let rc = unsafe { flame_cuda_device_name(device, name.as_mut_ptr(), 256) };
    if rc != 0 {
        return None;
    }
    // SAFETY: NUL-terminated by cuDeviceGetName within the buffer.
    Some(
        unsafe { CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// A copy of the CPU tensor `t` in page-locked memory, for asynchronous copies to a GPU.
pub fn pin_memory(t: &Tensor) -> Result<Tensor, String> {
    // SAFETY: a live tensor for the call; the result is a new tensor the returned Tensor owns.
    let out = unsafe { flame_pin_memory(t.as_ptr().cast_mut().cast()) };
    if out.is_null() {
        check(-1)?;
    }
    // SAFETY: a fresh, owned tensor from the shim.
    Ok(unsafe { Tensor::from_ptr(out.cast()) })
}

unsafe extern "C" {
    fn flame_cuda_set_device(device: c_int) -> c_int;
    fn flame_cuda_default_stream_busy(busy: *mut c_int) -> c_int;
    fn flame_set_grad(param: *mut c_void, grad: *mut c_void) -> c_int;
    fn flame_nccl_unique_id(out: *mut c_char) -> c_int;
    fn flame_nccl_init(
        id: *const c_char,
        world: c_int,
        rank: c_int,
        comm: *mut *mut c_void,
    ) -> c_int;
    fn flame_nccl_destroy(comm: *mut c_void) -> c_int;
    fn flame_nccl_all_reduce_avg(comm: *mut c_void, t: *mut c_void, stream: *mut c_void) -> c_int;
    fn flame_cuda_stream_create(stream: *mut *mut c_void) -> c_int;
    fn flame_cuda_event_create(event: *mut *mut c_void) -> c_int;
    fn flame_cuda_stream_wait(
        waiter: *mut c_void,
        stream: *mut c_void,
        event: *mut c_void,
    ) -> c_int;
}

/// Whether the current CUDA device's default stream (torch's) still has work queued, so that what the
/// host does meanwhile costs the GPU nothing.
pub fn cuda_busy() -> Result<bool, String> {
    let mut busy: c_int = 0;
    // SAFETY: a live out-pointer the shim writes.
    check(unsafe { flame_cuda_default_stream_busy(&raw mut busy) })?;
    Ok(busy != 0)
}

/// Makes CUDA device `device` current for this thread (`torch.cuda.set_device`).
pub fn cuda_set_device(device: usize) -> Result<(), String> {
    let device = c_int::try_from(device).map_err(|e| e.to_string())?;
    // SAFETY: a plain integer argument; errors come back as -1.
    check(unsafe { flame_cuda_set_device(device) })
}

/// The 128 bytes of a new NCCL unique id (`ncclGetUniqueId`).
pub fn nccl_unique_id() -> Result<Vec<u8>, String> {
    let mut id = vec![0u8; 128];
    // SAFETY: a buffer of the 128 bytes the shim writes.
    check(unsafe { flame_nccl_unique_id(id.as_mut_ptr().cast()) })?;
    Ok(id)
}

/// An NCCL communicator on the current CUDA device, and the side stream its collectives run on.
#[derive(Debug)]
pub struct Nccl {
    comm: *mut c_void,
    stream: *mut c_void,
    event: *mut c_void,
}

/// The default (legacy) CUDA stream, where tch's work runs.
const DEFAULT_STREAM: *mut c_void = std::ptr::null_mut();

impl Nccl {
    /// Joins rank `rank` of `world` of the communicator named by `id` (from [`nccl_unique_id`]).
    pub fn init(id: &[u8], world: u32, rank: u32) -> Result<Self, String> {
        if id.len() != 128 {
            return Err(format!("an NCCL unique id has 128 bytes, not {}", id.len()));
        }
        let (world, rank) = (
            c_int::try_from(world).map_err(|e| e.to_string())?,
            c_int::try_from(rank).map_err(|e| e.to_string())?,
        );
        let (mut comm, mut stream, mut event) = (
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        // SAFETY: 128 bytes of id; out-pointers the shim fills on success.
        check(unsafe { flame_nccl_init(id.as_ptr().cast(), world, rank, &raw mut comm) })?;
        // SAFETY: out-pointers the shim fills on success.
        check(unsafe { flame_cuda_stream_create(&raw mut stream) })?;
        // SAFETY: as above.
        check(unsafe { flame_cuda_event_create(&raw mut event) })?;
        Ok(Self {
            comm,
            stream,
            event,
        })
    }

    /// Averages the contiguous float32 or bfloat16 CUDA tensor `t` over the ranks, in place, on the
    /// side stream once the default stream's work so far is done (so it overlaps what comes after).
    pub fn all_reduce_avg_async(&self, t: &Tensor) -> Result<(), String> {
        // SAFETY: handles made by `init`; the side stream waits for the default stream.
        check(unsafe { flame_cuda_stream_wait(self.stream, DEFAULT_STREAM, self.event) })?;
        // SAFETY: a live tensor, which the caller keeps alive until `wait` has been called.
        check(unsafe {
            flame_nccl_all_reduce_avg(self.comm, t.as_ptr().cast_mut().cast(), self.stream)
        })
    }

    /// Makes the default stream wait for every collective enqueued so far.
    pub fn wait(&self) -> Result<(), String> {
        // SAFETY: handles made by `init`.
        check(unsafe { flame_cuda_stream_wait(DEFAULT_STREAM, self.stream, self.event) })
    }

    /// Averages `t` over the ranks in place on the default stream (ordered with tch's work).
    pub fn all_reduce_avg(&self, t: &Tensor) -> Result<(), String> {
        // SAFETY: a live tensor; the collective is ordered on the default stream like tch's own work.
        check(unsafe {
            flame_nccl_all_reduce_avg(self.comm, t.as_ptr().cast_mut().cast(), DEFAULT_STREAM)
        })
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        // SAFETY: the communicator made by `init`, destroyed once.
        let _ = check(unsafe { flame_nccl_destroy(self.comm) });
    }
}

/// Makes `grad` the gradient of `param` (`param.grad = grad`); the backward pass then accumulates into
/// it in place.
pub fn set_grad(param: &Tensor, grad: &Tensor) -> Result<(), String> {
    // SAFETY: two live tensors for the call; the parameter keeps its own reference to the gradient.
    check(unsafe {
        flame_set_grad(
            param.as_ptr().cast_mut().cast(),
            grad.as_ptr().cast_mut().cast(),
        )
    })
}
