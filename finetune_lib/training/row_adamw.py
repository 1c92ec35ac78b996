"""AdamW that skips the rows of an embedding matrix no gradient has reached yet: the same math, less work.

Fine-tuning an encoder updates its word-embedding matrix (30,522 x 384 = 11.7M of MiniLM's 22.7M
parameters) at every step, yet a batch of short reviews touches a few hundred rows, and a whole
fine-tuning run a few thousand. AdamW's cost is a pass over every parameter, its gradient and two
moment buffers, so about half of each optimizer step goes to rows whose update is exactly zero:

    a row whose gradient has been zero at every step so far has m = 0 and v = 0, so its AdamW
    update lr * m_hat / (sqrt(v_hat) + eps) is exactly 0.

`RowSparseAdamW` keeps, for each parameter of a group marked `row_sparse`, the set of rows that
have ever had a nonzero gradient (found from the gradient itself, so any cause counts: the tokens
of the batch, a tied head, a penalty), and runs torch's fused AdamW kernel on those rows only.
Every other group takes torch's own fused AdamW step. Decoupled weight decay still reaches every
row (`p *= 1 - lr * weight_decay`), as in AdamW. Once a row is touched it stays in the set, because
its moments keep updating it (lazy Adam variants drop those updates and change the math; this
does not). The per-row results are those of `torch.optim.AdamW(fused=True)` on the whole matrix:
bit for bit without weight decay, to rounding with it (the decay is applied as a separate
multiply). Tested against torch's AdamW over many steps, with resume.

Measured on MiniLM, 2 CPU cores: see BENCHMARKS.md. FineTuner marks the input embedding matrix
`row_sparse` on CPU when it trains and is not tied to an output layer, and never with a loss scaler
or FSDP (`mark_row_sparse`).
"""

from __future__ import annotations

from typing import Any

import torch

#: matrices with fewer rows than this are not worth the bookkeeping
MIN_ROWS = 1024


class RowSparseAdamW(torch.optim.AdamW):
    """`torch.optim.AdamW` where groups with `"row_sparse": True` update only rows touched so far.

    Example:
        >>> emb = torch.nn.Embedding(5000, 64)
        >>> opt = RowSparseAdamW([{"params": [emb.weight], "row_sparse": True}], lr=1e-3, fused=True)
        >>> emb(torch.tensor([3, 7])).sum().backward()
        >>> opt.step()                                   # rows 3 and 7 only; the rest are exactly unchanged
        >>> int(opt.state[emb.weight]["touched_rows"].sum())
        2
    """

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        sparse = [g for g in self.param_groups if g.get("row_sparse")]
        hidden = [(g, g["params"]) for g in sparse]
        for group in sparse:  # torch's step skips empty groups
            group["params"] = []
        try:
            super().step()
        finally:
            for group, params in hidden:
                group["params"] = params
        for group in sparse:
            for param in group["params"]:
                if param.grad is not None:
                    self._row_step(param, group)
        return loss

    def _row_step(self, param: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[param]
        if not state:  # the layout of torch's AdamW state, plus the touched rows
            state["step"] = torch.tensor(0.0, dtype=torch.float32, device=param.device)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["touched_rows"] = torch.zeros(param.shape[0], dtype=torch.bool, device=param.device)
        if state["touched_rows"].dtype != torch.bool:  # load_state_dict casts state to the parameter's dtype
            state["touched_rows"] = state["touched_rows"].bool()
        grad = param.grad
        touched = state["touched_rows"]
        touched |= grad.ne(0).any(dim=1)
        rows = touched.nonzero().squeeze(1)
        lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        if decay:
            param.mul_(1 - lr * decay)  # every row decays, touched or not, as in AdamW
        p, g, m, v = (t.index_select(0, rows) for t in (param, grad, state["exp_avg"], state["exp_avg_sq"]))
        state["step"] += 1
        torch._fused_adamw_([p], [g], [m], [v], [], [state["step"]], amsgrad=False, lr=lr, beta1=beta1,
                            beta2=beta2, weight_decay=0.0, eps=eps, maximize=bool(group.get("maximize")),
                            grad_scale=None, found_inf=None)
        param.index_copy_(0, rows, p)
        state["exp_avg"].index_copy_(0, rows, m)
        state["exp_avg_sq"].index_copy_(0, rows, v)


def mark_row_sparse(groups: list[dict[str, Any]], model: torch.nn.Module) -> list[dict[str, Any]]:
    """Move the model's input embedding matrix into a group of its own marked `row_sparse`.

    Only when it trains, has at least `MIN_ROWS` rows and is not shared with another module (a tied
    LM head gives every row a gradient at every step, so there would be nothing to skip). The
    other groups are returned unchanged, in order.
    """
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    weight = getattr(embedding, "weight", None)
    if not isinstance(weight, torch.nn.Parameter) or weight.dim() != 2 or weight.shape[0] < MIN_ROWS:
        return groups
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None and getattr(output, "weight", None) is weight:
        return groups
    out: list[dict[str, Any]] = []
    for group in groups:
        position = next((i for i, p in enumerate(group["params"]) if p is weight), None)
        if position is None:
            out.append(group)
            continue
        rest = {**group, "params": [p for i, p in enumerate(group["params"]) if i != position],
                "names": [n for i, n in enumerate(group["names"]) if i != position]}
        if rest["params"]:
            out.append(rest)
        out.append({**group, "params": [weight], "names": [group["names"][position]], "row_sparse": True})
    return out
