"""The accuracy rule every flash256 kernel is held to (flash-attention's own):

    max|x - x_ref| <= 2 * max|x_lowp - x_ref| + atol

where x_ref is the math in fp32 from the low-precision inputs and x_lowp the same math
in the input precision; for the output and every gradient.
"""
import torch

from .reference import attention_ref

DEFAULT_ATOL = 1e-5


def max_abs_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return (x.float() - ref.float()).abs().max().item() if x.numel() else 0.0


def accuracy_check(name: str, x, ref, lowp, factor: float = 2.0, atol: float = DEFAULT_ATOL):
    """(ok, message) for one tensor under the rule."""
    err, bound = max_abs_err(x, ref), factor * max_abs_err(lowp, ref) + atol
    ok = err <= bound and not torch.isnan(x).any().item()
    return ok, f"{name}: max err {err:.3e}, bound {bound:.3e}"


def reference_results(q, k, v, dout=None, dlse=None, **options):
    """{'out': ..., 'dq': ...} from the fp32 reference and from the low-precision one; the gradients
    are those of <out, dout> (+ <lse, dlse> when dlse is given)."""
    results = []
    for upcast in (True, False):
        leaves = [t.detach().clone().requires_grad_(dout is not None) for t in (q, k, v)]
        out, lse = attention_ref(*leaves, upcast=upcast, **options)
        result = {"out": out.detach(), "lse": lse.detach()}
        if dout is not None:
            outputs, grad_outputs = ([out, lse], [dout, dlse]) if dlse is not None else ([out], [dout])
            grads = torch.autograd.grad(outputs, leaves, grad_outputs)
            result.update(zip(("dq", "dk", "dv"), grads))
        results.append(result)
    return results


def check_against_reference(actual: dict, q, k, v, dout=None, dlse=None, **options) -> list[str]:
    """Failures of `actual` ({'out', 'dq', 'dk', 'dv'} subset) under the rule; [] when all pass."""
    ref, lowp = reference_results(q, k, v, dout, dlse, **options)
    failures = []
    for name, x in actual.items():
        ok, message = accuracy_check(name, x, ref[name], lowp[name])
        if not ok:
            failures.append(message)
    return failures
