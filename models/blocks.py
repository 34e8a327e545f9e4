"""Building blocks (docs/MATH.md §2): MLP, the fused expert bank and gate bank, one gated fusion level.

Layout [project]: inside a backbone, per-module tensors are *module-major* `[K, B, d]` (module k's
rows contiguous), because a batched matmul over modules then needs no copy. A module-level input is
either one shared `[B, d]` tensor (every module reads x: the first level of every backbone, and
ML-MMoE's gates) or module rows `[R, B, d]` with module k reading row `rows[k]`.

The fused form is mathematically identical to one `nn.Linear`/MLP per expert and per gate
(docs/MATH.md §2 "Fused implementation"); tests compare it with per-expert loops on copied weights.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import torch
from torch import nn


class BackboneOutput(NamedTuple):
    """hidden: [B, T, D_L], row k is tower k's input (may be a non-contiguous view; use reshape).
    gates: per level, the softmax gate weights [B, M, E] (before any native residual), or None for
    backbones without gates (shared-bottom, cross-stitch)."""

    hidden: torch.Tensor
    gates: Optional[list[torch.Tensor]]


class Backbone(nn.Module):
    """Interface of every backbone: forward(x [B, D]) -> BackboneOutput; `out_dim` = D_L."""

    out_dim: int
    num_tasks: int


class MLP(nn.Sequential):
    """MLP(d_in, [w_1..w_n]): Linear(bias=True) -> ReLU for every layer, the last included (§2).
    An empty width list is the identity. `out_dim` is the output width."""

    def __init__(self, d_in: int, widths: Sequence[int]) -> None:
        layers: list[nn.Module] = []
        for width in widths:
            layers += [nn.Linear(d_in, width), nn.ReLU()]
            d_in = width
        super().__init__(*layers)
        self.out_dim = d_in


def linear_init_(weight: torch.Tensor, bias: Optional[torch.Tensor], fan_in: int) -> None:
    """nn.Linear's default init: W, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform a=sqrt(5))."""
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        weight.uniform_(-bound, bound)
        if bias is not None:
            bias.uniform_(-bound, bound)


class BankLinear(nn.Module):
    """K independent linear maps evaluated as one batched matmul.

    weight [K, d_in, d_out] (slice k = nn.Linear(d_in, d_out).weight.T), bias [K, d_out].
    input_rows None: input is shared x [B, d_in], every module reads it (one plain matmul).
    input_rows given: input is rows [R, B, d_in], module k reads rows[input_rows[k]].
    Returns [K, B, d_out].
    """

    def __init__(self, num: int, d_in: int, d_out: int, input_rows: Optional[Sequence[int]] = None,
                 bias: bool = True) -> None:
        super().__init__()
        self.num, self.d_in, self.d_out = num, d_in, d_out
        self.weight = nn.Parameter(torch.empty(num, d_in, d_out))
        self.bias = nn.Parameter(torch.empty(num, d_out)) if bias else None
        linear_init_(self.weight, self.bias, d_in)
        self.shared_input = input_rows is None
        rows = list(range(num)) if input_rows is None else list(input_rows)
        if len(rows) != num:
            raise ValueError(f"BankLinear: {len(rows)} input rows for {num} modules")
        self._gather = _row_gather(rows)
        self.register_buffer("_rows", torch.tensor(rows, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shared_input:
            # [B, d] @ [d, K*o]: one GEMM for all modules (the permute copies only the weights).
            flat = self.weight.permute(1, 0, 2).reshape(self.d_in, self.num * self.d_out)
            out = x @ flat if self.bias is None else torch.addmm(self.bias.reshape(-1), x, flat)
            return out.view(x.shape[0], self.num, self.d_out).transpose(0, 1)
        return BankMatmul.apply(self._rows_of(x), self.weight, self.bias)

    def _rows_of(self, x: torch.Tensor) -> torch.Tensor:
        """Module k's input row, [K, B, d]: a view for rows 0..K-1, an expand for equal blocks
        (each row read by g consecutive modules, e.g. AdaTT-sp's task units), else a gather."""
        kind, size = self._gather
        if kind == "prefix":
            return x[: self.num]
        if kind == "blocks":
            rows = x[: self.num // size]
            return rows.unsqueeze(1).expand(-1, size, -1, -1).reshape(self.num, x.shape[1], x.shape[2])
        return x.index_select(0, self._rows)


class _AutocastState(NamedTuple):
    device_type: str
    enabled: bool
    dtype: torch.dtype


def _autocast_state(x: torch.Tensor) -> _AutocastState:
    """The autocast state of x's device type when a custom Function's forward runs (off for devices
    without autocast, e.g. meta)."""
    device_type = x.device.type
    if not torch.amp.is_autocast_available(device_type):
        return _AutocastState("cpu", False, torch.bfloat16)
    return _AutocastState(device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))


def _replay_autocast(state: _AutocastState) -> torch.autocast:
    """Re-enter the forward's autocast state in backward, so the backward matmuls cast their
    operands as the forward's did (grad arrives in bf16, saved fp32 weights are cast to match).
    What torch.amp.custom_fwd/custom_bwd do for one device type fixed at class definition; these
    Functions run on CPU and CUDA."""
    return torch.autocast(state.device_type, dtype=state.dtype, enabled=state.enabled)


class BankMatmul(torch.autograd.Function):
    """out[k] = rows[k] @ weight[k] + bias[k]: [K, B, d] x [K, d, o] (+ [K, o]) -> [K, B, o].

    Autograd's batched-matmul backward forms the weight gradient as rows^T @ grad, which is several
    times slower on CPU than (grad^T @ rows)^T when o is small (gates, tower heads); this computes
    the latter [project]. `bias` may be None. Under autocast the gradients come back in each
    input's own dtype (fp32 master weights get fp32 gradients).
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(rows, weight)
        ctx.has_bias = bias is not None
        ctx.autocast = _autocast_state(rows)
        return torch.bmm(rows, weight) if bias is None else torch.baddbmm(bias.unsqueeze(1), rows, weight)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        rows, weight = ctx.saved_tensors
        need_rows, need_weight, need_bias = ctx.needs_input_grad
        grad_rows = grad_weight = grad_bias = None
        with _replay_autocast(ctx.autocast):
            if need_rows:
                grad_rows = torch.bmm(grad, weight.transpose(1, 2)).to(rows.dtype)
            if need_weight:  # copied into the weight's own layout, which DDP's gradient buckets expect
                grad_weight = torch.empty_like(weight).copy_(torch.bmm(grad.transpose(1, 2), rows).transpose(1, 2))
        if ctx.has_bias and need_bias:
            grad_bias = grad.sum(1, dtype=weight.dtype)
        return grad_rows, grad_weight, grad_bias


def _row_gather(rows: list[int]) -> tuple[str, int]:
    """How BankLinear reads its modules' rows: ("prefix", 1), ("blocks", g) or ("index", 0)."""
    if rows == list(range(len(rows))):
        return "prefix", 1
    size = rows.count(0)
    if size and len(rows) % size == 0 and rows == [k // size for k in range(len(rows))]:
        return "blocks", size
    return "index", 0


class ExpertBank(nn.Module):
    """K expert MLPs of one architecture (docs/MATH.md §2 "expert bank"): layer i is a BankLinear + ReLU.

    Input as BankLinear's (shared [B, d_in] or rows [R, B, d_in] with `input_rows`); output
    [K, B, widths[-1]], all >= 0. `widths` must not be empty.
    """

    def __init__(self, num: int, d_in: int, widths: Sequence[int],
                 input_rows: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        if not widths:
            raise ValueError("ExpertBank needs at least one layer width")
        own_rows = list(range(num))  # layers after the first read their own module's row
        layers = []
        for i, width in enumerate(widths):
            layers.append(BankLinear(num, d_in, width, input_rows if i == 0 else own_rows))
            d_in = width
        self.layers = nn.ModuleList(layers)
        self.num = num
        self.out_dim = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x


class GateBank(nn.Module):
    """M softmax gates of one level, fused (docs/MATH.md §2 "Gate").

    Gate m reads input row `gate_rows[m]` (None = every gate reads the shared input) and spans the
    experts `gate_experts[m]` (None = all E experts). Gates of equal width share one BankLinear
    [M_w, d_in, width]; gates over a subset (PLE task gates) are scattered into an E-wide row with
    zeros outside their subset, so a level fuses with one matmul whatever the routing [project].
    Returns [M, B, E]; each row sums to 1 and is >= 0.
    """

    def __init__(self, d_in: int, num_experts: int, gate_rows: Optional[Sequence[int]],
                 gate_experts: Sequence[Optional[Sequence[int]]], bias: bool = True) -> None:
        super().__init__()
        self.num_experts = num_experts
        spans = [list(range(num_experts)) if e is None else list(e) for e in gate_experts]
        for m, span in enumerate(spans):
            if not span or len(set(span)) != len(span) or not all(0 <= e < num_experts for e in span):
                raise ValueError(f"GateBank: gate {m} has an invalid expert span {span}")
        rows = None if gate_rows is None else list(gate_rows)
        widths = list(dict.fromkeys(len(s) for s in spans))  # distinct widths, first-seen order
        groups = [[m for m, s in enumerate(spans) if len(s) == w] for w in widths]
        self.banks = nn.ModuleList(
            BankLinear(len(g), d_in, w, None if rows is None else [rows[m] for m in g], bias=bias)
            for g, w in zip(groups, widths)
        )
        self.spans, self.groups = spans, groups  # gate m spans experts spans[m]; banks[i] holds groups[i]
        order = [m for g in groups for m in g]
        self._dense = len(groups) == 1 and order == list(range(len(spans))) and all(
            s == list(range(num_experts)) for s in spans)
        for i, g in enumerate(groups):
            self.register_buffer(f"_span{i}", torch.tensor([spans[m] for m in g], dtype=torch.long),
                                 persistent=False)
        self._reorder = order != list(range(len(spans)))
        self.register_buffer("_inverse", torch.tensor(sorted(range(len(order)), key=order.__getitem__),
                                                      dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._dense:
            return torch.softmax(self.banks[0](x), dim=-1)
        parts = []
        for i, bank in enumerate(self.banks):
            probs = torch.softmax(bank(x), dim=-1)  # [M_w, B, w]
            span = getattr(self, f"_span{i}").unsqueeze(1).expand(-1, probs.shape[1], -1)
            parts.append(probs.new_zeros(probs.shape[0], probs.shape[1], self.num_experts).scatter(2, span, probs))
        gates = torch.cat(parts, dim=0)
        return gates.index_select(0, self._inverse) if self._reorder else gates


class GatedFusionLevel(nn.Module):
    """One extraction / fusion level: an expert bank, a gate bank, and one fused matmul.

    forward(expert_input, gate_input, residual) -> (fused [M, B, D_l], gates [M, B, E]), where
    fused_m = sum_e (gates[m, e] + residual[m, e]) * expert_e. `residual` [M, E] is AdaTT's padded
    native-expert weight (eq 11) or None.
    """

    def __init__(self, d_in: int, widths: Sequence[int], num_experts: int,
                 expert_rows: Optional[Sequence[int]], gate_in_dim: int, gate_rows: Optional[Sequence[int]],
                 gate_experts: Sequence[Optional[Sequence[int]]], gate_bias: bool) -> None:
        super().__init__()
        self.experts = ExpertBank(num_experts, d_in, widths, expert_rows)
        self.gates = GateBank(gate_in_dim, num_experts, gate_rows, gate_experts, gate_bias)
        self.num_gates = len(gate_experts)
        self.out_dim = widths[-1]

    def forward(self, expert_input: torch.Tensor, gate_input: torch.Tensor,
                residual: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        experts = self.experts(expert_input)  # [E, B, D]
        gates = self.gates(gate_input)  # [M, B, E]
        mix = gates if residual is None else gates + residual.unsqueeze(1)
        return GatedMix.apply(mix, experts), gates


class GatedMix(torch.autograd.Function):
    """fused[m, b] = sum_e mix[m, b, e] * experts[e, b]: [M, B, E] x [E, B, D] -> [M, B, D].

    Forward and both gradients are single einsums [project]: autograd's own backward of the einsum
    goes through batched-matmul backward and permute copies and measured about 2x slower on CPU.
    Under autocast the backward replays the forward's autocast state (see BankMatmul).
    """

    @staticmethod
    def forward(ctx, mix: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(mix, experts)
        ctx.autocast = _autocast_state(mix)
        return torch.einsum("mbe,ebd->mbd", mix, experts)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mix, experts = ctx.saved_tensors
        with _replay_autocast(ctx.autocast):
            return (torch.einsum("mbd,ebd->mbe", grad, experts).to(mix.dtype),
                    torch.einsum("mbe,mbd->ebd", mix, grad).to(experts.dtype))


def gates_batch_major(gates: list[torch.Tensor]) -> list[torch.Tensor]:
    """Module-major gate tensors [M, B, E] -> the diagnostic layout [B, M, E] (views)."""
    return [g.transpose(0, 1) for g in gates]


class LevelStack(Backbone):
    """Backbone made of GatedFusionLevels applied in turn (MMoE, ML-MMoE, CGC/PLE, AdaTT).

    Level 1 reads the shared input x [B, D]; level l > 1 reads the previous level's rows. Subclasses
    choose the routing when building `levels`, and may override `gate_input` (ML-MMoE gates read x)
    and `residual` (AdaTT's native-expert weights). The last level outputs the T task rows.
    """

    def __init__(self, levels: Sequence[GatedFusionLevel], num_tasks: int) -> None:
        super().__init__()
        self.levels = nn.ModuleList(levels)
        self.num_tasks = num_tasks
        self.out_dim = levels[-1].out_dim

    def gate_input(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return rows

    def residual(self, level: int, ref: torch.Tensor) -> Optional[torch.Tensor]:
        return None

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        rows, gates = x, []
        for i, level in enumerate(self.levels):
            rows, level_gates = level(rows, self.gate_input(x, rows), self.residual(i, x))
            gates.append(level_gates)
        return BackboneOutput(rows.transpose(0, 1), gates_batch_major(gates))
