//! The C++ shim (`csrc/shim.cpp`): libtorch calls that tch 0.24 does not bind.

use std::ffi::{CStr, c_char, c_int, c_void};

use tch::Tensor;

unsafe extern "C" {
    fn flame_shim_error() -> *const c_char;
    fn flame_autocast_cuda_bf16() -> c_int;
    fn flame_allow_tf32(on: c_int) -> c_int;
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
