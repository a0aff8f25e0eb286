"""Triton kernel behind ``TritonAdamW`` (imported only where triton is installed).

One launch updates one parameter tensor: weight decay, both moments and the bias-corrected step, read and
written once each, computed in fp32 whatever the storage dtype. The learning rate and the step count are
read from device memory, so a recorded CUDA graph replays with the current values.
"""

import triton
import triton.language as tl


@triton.jit
def adamw_update(
    param_ptr,
    grad_ptr,
    exp_avg_ptr,
    exp_avg_sq_ptr,
    lr_ptr,
    step_ptr,
    found_inf_ptr,
    n_elements,
    beta1,
    beta2,
    eps,
    weight_decay,
    HAS_FOUND_INF: tl.constexpr,
    BLOCK: tl.constexpr,
):
    if HAS_FOUND_INF:
        if tl.load(found_inf_ptr) != 0:  # a non-finite gradient: leave everything as it is
            return
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < n_elements
    lr = tl.load(lr_ptr).to(tl.float32)
    step = tl.load(step_ptr).to(tl.float32)  # already counts this update
    p = tl.load(param_ptr + offsets, mask=inside).to(tl.float32)
    g = tl.load(grad_ptr + offsets, mask=inside).to(tl.float32)
    m = tl.load(exp_avg_ptr + offsets, mask=inside).to(tl.float32)
    v = tl.load(exp_avg_sq_ptr + offsets, mask=inside).to(tl.float32)
    p = p * (1.0 - lr * weight_decay)
    m = m + (1.0 - beta1) * (g - m)
    v = beta2 * v + (1.0 - beta2) * g * g
    bias_correction1 = 1.0 - tl.exp2(step * tl.log2(beta1))
    bias_correction2_sqrt = tl.sqrt(1.0 - tl.exp2(step * tl.log2(beta2)))
    denom = tl.sqrt(v) / bias_correction2_sqrt + eps
    p = p - (lr / bias_correction1) * (m / denom)
    tl.store(param_ptr + offsets, p.to(param_ptr.dtype.element_ty), mask=inside)
    tl.store(exp_avg_ptr + offsets, m.to(exp_avg_ptr.dtype.element_ty), mask=inside)
    tl.store(exp_avg_sq_ptr + offsets, v.to(exp_avg_sq_ptr.dtype.element_ty), mask=inside)
