"""Universal approximation, shown: PoM and attention transformers on set-to-set tasks.

The PoM paper proves that transformers with Polynomial Mixers instead of attention stay
universal sequence-to-sequence approximators (they can build a *contextual mapping*:
each output token a function of its own input and of the whole set of other tokens).
This script shows it on small synthetic tasks where that is exactly what is asked:

* ``rank``   -- the rank of each token within its sequence, as regression of
                rank / (N - 1) in [0, 1] (rank = number of other tokens that are smaller);
* ``median`` -- the signed distance of each token to its sequence's median, x_i - median(x);
* ``mean``   -- (optional) is this token above its sequence's mean (binary classification).

Every sequence is ``x = mu + sigma * z`` with z ~ N(0, 1) per token and a random shift
mu ~ U(-1, 1) and scale sigma ~ logU(1/2, 2) per sequence, so a token's value alone says
little about its rank or its distance to the median: the answer needs the whole set.
A control that sees no context (the same network with its mixers removed, an MLP per
token) shows how much of each task a single token can answer.

The models: a pre-norm transformer encoder (scalar -> 2-layer MLP token embedding,
L blocks of [LayerNorm -> mixer -> residual, LayerNorm -> MLP -> residual], LayerNorm,
linear head), with ``PolynomialMixer(dim, degree=2, expand=2)`` (product variant),
optionally the power variant, or ``MultiHeadAttention(dim, heads)``. The MLP hidden width
of each model is chosen so that its parameter count matches the PoM model's (printed).
No positional encoding: with none, both mixers (and hence the whole network) are
permutation-equivariant, as the targets are, so the tasks are set-to-set tasks.

Every model is trained the same way: AdamW, the same steps, learning rate, warm-up and
cosine schedule, the same number of tokens per step (batch = tokens_per_step / N
sequences), the same fresh random batches drawn from a generator seeded by the seed, and
the same initialisation seed; evaluation on one fixed held-out set of sequences per
(task, N). Results (mean +- std over seeds) go to ``<out>/universal_approximation.md``
and ``.json``.

    python experiments/universal_approximation.py                 # the full grid (~20 CPU min)
    python experiments/universal_approximation.py --quick --out /tmp/ua   # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from polymixer import MultiHeadAttention, PolynomialMixer
from polymixer.environment import machine
from polymixer.io import atomic_write

TASKS = ("rank", "median", "mean")
MIXERS = ("pom", "pom-power", "attention", "none")
MIXER_LABELS = {
    "pom": "PoM (product, k=2, e=2)",
    "pom-power": "PoM (power, k=2, e=2)",
    "attention": "attention",
    "none": "no mixing (MLP per token)",
}


# ----------------------------------------------------------------------------- tasks
def sample_sequences(batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """Sequences ``x: (B, N)`` = mu + sigma * z, mu ~ U(-1, 1), sigma ~ logU(1/2, 2) per sequence."""
    z = torch.randn(batch, length, generator=generator)
    mu = torch.rand(batch, 1, generator=generator) * 2 - 1
    sigma = torch.exp((torch.rand(batch, 1, generator=generator) * 2 - 1) * math.log(2.0))
    return mu + sigma * z


def rank_targets(x: torch.Tensor) -> torch.Tensor:
    """Rank of each token in its sequence, divided by N - 1: ``(B, N) -> (B, N)`` in [0, 1].

    rank_i = #{j : x_j < x_i} (0 for the smallest token, N - 1 for the largest; the
    inputs are continuous, so ties have probability 0)."""
    n = x.shape[-1]
    ranks = (x.unsqueeze(-1) > x.unsqueeze(-2)).sum(-1).to(x.dtype)
    return ranks / max(n - 1, 1)


def median_targets(x: torch.Tensor) -> torch.Tensor:
    """Signed distance ``x_i - median(x)`` of each token to its sequence's median, ``(B, N)``.

    For even N the median is the mean of the two middle values."""
    s, _ = x.sort(dim=-1)
    n = x.shape[-1]
    if n % 2:
        med = s[..., n // 2]
    else:
        med = 0.5 * (s[..., n // 2 - 1] + s[..., n // 2])
    return x - med.unsqueeze(-1)


def mean_targets(x: torch.Tensor) -> torch.Tensor:
    """1.0 where a token is above its sequence's mean, else 0.0: ``(B, N)``."""
    return (x > x.mean(dim=-1, keepdim=True)).to(x.dtype)


TARGETS = {"rank": rank_targets, "median": median_targets, "mean": mean_targets}


def make_batch(task: str, batch: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``(B, N, 1)`` and targets ``(B, N)`` of ``task``."""
    if task not in TARGETS:
        raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
    x = sample_sequences(batch, length, generator)
    return x.unsqueeze(-1), TARGETS[task](x)


# ----------------------------------------------------------------------------- models
def make_mixer(mixer: str, dim: int, heads: int) -> nn.Module | None:
    if mixer == "pom":
        return PolynomialMixer(dim, degree=2, expand=2)
    if mixer == "pom-power":
        return PolynomialMixer(dim, degree=2, expand=2, variant="power")
    if mixer == "attention":
        return MultiHeadAttention(dim, heads)
    if mixer == "none":
        return None
    raise ValueError(f"mixer: expected one of {MIXERS}, got {mixer!r}")


class Block(nn.Module):
    """Pre-norm block: x + mixer(LN(x)), then x + MLP(LN(x)); without a mixer, the MLP only."""

    def __init__(self, dim: int, mixer: nn.Module | None, hidden: int):
        super().__init__()
        self.mixer = mixer
        self.norm1 = nn.LayerNorm(dim) if mixer is not None else None
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mixer is not None:
            x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SetTransformer(nn.Module):
    """``x: (B, N, in_dim)`` -> ``(B, N)`` (one scalar per token: regression value or logit)."""

    def __init__(self, mixer: str, dim: int = 32, depth: int = 2, heads: int = 4, hidden: int = 64, in_dim: int = 1):
        super().__init__()
        self.mixer_name = mixer
        self.embed = nn.Sequential(nn.Linear(in_dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(Block(dim, make_mixer(mixer, dim, heads), hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h)).squeeze(-1)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def mlp_hidden_for(mixer: str, dim: int, heads: int, reference_hidden: int) -> int:
    """MLP hidden width that gives a ``mixer`` block the parameter count of a PoM (product) block
    whose MLP is ``reference_hidden`` wide (so all models are of equal size)."""
    target = count_parameters(Block(dim, make_mixer("pom", dim, heads), reference_hidden))
    per_hidden = 2 * dim + 1  # one hidden unit: a row and a column of the MLP's linears, a bias
    base = count_parameters(Block(dim, make_mixer(mixer, dim, heads), 1)) - per_hidden
    return max(1, round((target - base) / per_hidden))


def build_model(mixer: str, dim: int = 32, depth: int = 2, heads: int = 4, pom_mlp_ratio: float = 2.0) -> SetTransformer:
    """The set transformer with ``mixer``; every mixer's model has the parameter count of the
    PoM model whose MLP hidden width is ``pom_mlp_ratio * dim``."""
    hidden = mlp_hidden_for(mixer, dim, heads, round(pom_mlp_ratio * dim))
    return SetTransformer(mixer, dim=dim, depth=depth, heads=heads, hidden=hidden)


# ----------------------------------------------------------------------------- training
@dataclass
class Config:
    tasks: list[str] = field(default_factory=lambda: ["rank", "median"])
    lengths: list[int] = field(default_factory=lambda: [8, 32, 128])
    mixers: list[str] = field(default_factory=lambda: ["pom", "attention", "none"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    dim: int = 32
    depth: int = 2
    heads: int = 4
    pom_mlp_ratio: float = 2.0
    steps: int = 1000
    tokens_per_step: int = 1024
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    eval_tokens: int = 16384
    eval_seed: int = 1234


def loss_fn(task: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if task == "mean":
        return F.binary_cross_entropy_with_logits(pred, target)
    return F.mse_loss(pred, target)


@torch.no_grad()
def evaluate(task: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 4096) -> dict:
    """Held-out loss and metrics of ``model`` on ``x: (S, N, 1)``, ``y: (S, N)``.

    rank: R^2 of rank/(N-1) and the accuracy of the exact rank (prediction rounded to the
    nearest integer rank); median: R^2 and the accuracy of the sign (above / below the
    median); mean: accuracy of the above-the-mean classification."""
    model.eval()
    rows = max(1, chunk // x.shape[1])
    pred = torch.cat([model(x[i : i + rows]) for i in range(0, x.shape[0], rows)])
    model.train()
    loss = loss_fn(task, pred, y).item()
    out = {"loss": loss}
    if task == "mean":
        out["accuracy"] = ((pred > 0).float() == y).float().mean().item()
        return out
    out["r2"] = 1.0 - F.mse_loss(pred, y).item() / y.var(unbiased=False).item()
    if task == "rank":
        n = x.shape[1]
        out["accuracy"] = (torch.round(pred * (n - 1)).clamp(0, n - 1) == torch.round(y * (n - 1))).float().mean().item()
        out["mean_abs_rank_error"] = ((pred - y).abs() * (n - 1)).mean().item()
    else:
        out["accuracy"] = ((pred > 0) == (y > 0)).float().mean().item()
    return out


def lr_at(step: int, config: Config) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    t = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def train_one(task: str, length: int, mixer: str, seed: int, config: Config, eval_set) -> dict:
    torch.manual_seed(seed)  # the same initialisation seed for every model
    model = build_model(mixer, config.dim, config.depth, config.heads, config.pom_mlp_ratio)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    data = torch.Generator().manual_seed(seed)  # the same batches for every model
    batch = max(1, config.tokens_per_step // length)
    t0 = time.perf_counter()
    recent = []
    for step in range(config.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, config)
        x, y = make_batch(task, batch, length, data)
        loss = loss_fn(task, model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        recent.append(loss.item())
        recent = recent[-50:]
    train_time = time.perf_counter() - t0
    metrics = evaluate(task, model, *eval_set)
    return {
        "task": task, "length": length, "mixer": mixer, "seed": seed,
        "parameters": count_parameters(model), "batch": batch,
        "train_loss_last50": statistics.fmean(recent), "train_seconds": train_time, **metrics,
    }


def eval_set_for(task: str, length: int, config: Config):
    generator = torch.Generator().manual_seed(config.eval_seed * 1000 + length)
    return make_batch(task, max(1, config.eval_tokens // length), length, generator)


# ----------------------------------------------------------------------------- report
def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (task, length, mixer): mean and std over seeds of every metric."""
    keys = ("loss", "r2", "accuracy", "mean_abs_rank_error", "train_loss_last50", "train_seconds")
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["task"], run["length"], run["mixer"]), []).append(run)
    rows = []
    for (task, length, mixer), members in groups.items():
        row = {"task": task, "length": length, "mixer": mixer, "seeds": len(members),
               "parameters": members[0]["parameters"]}
        for key in keys:
            if key in members[0]:
                row[key + "_mean"], row[key + "_std"] = _mean_std([m[key] for m in members])
        rows.append(row)
    return rows


TASK_TEXT = {
    "rank": "rank of each token / (N-1), regression (MSE); accuracy = exact rank after rounding",
    "median": "x_i - median(x), regression (MSE); accuracy = sign (above / below the median) right",
    "mean": "x_i > mean(x), binary classification (BCE); accuracy",
}


def markdown(rows: list[dict], meta: dict) -> str:
    cfg = meta["config"]
    lines = [
        "# Universal approximation, shown: PoM vs attention on set-to-set tasks",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}  ",
        f"Machine: {meta['machine']}, torch {meta['torch']}, {meta['threads']} thread  ",
        f"Total time: {meta['total_seconds']:.0f} s ({meta['total_seconds'] / 60:.1f} min)",
        "",
        f"Models: pre-norm transformer encoder, width {cfg['dim']}, {cfg['depth']} blocks, no positional "
        "encoding (permutation-equivariant), MLP widths chosen for equal parameter counts. "
        f"Training: AdamW, lr {cfg['lr']:g} (warm-up {cfg['warmup_steps']}, cosine to 10%), "
        f"weight decay {cfg['weight_decay']:g}, {cfg['steps']} steps of {cfg['tokens_per_step']} tokens "
        f"(batch = {cfg['tokens_per_step']}/N sequences), fresh data every step; seeds {cfg['seeds']}. "
        f"Evaluation: a fixed held-out set of {cfg['eval_tokens']} tokens per (task, N). "
        "Values: mean ± std over seeds.",
        "",
        "Parameters: " + ", ".join(f"{MIXER_LABELS[m]} {p:,}" for m, p in meta["parameters"].items()),
        "",
    ]
    for task in cfg["tasks"]:
        lines += [f"## {task}: {TASK_TEXT[task]}", ""]
        has_r2 = task != "mean"
        head = "| N | model | held-out loss |" + (" R² |" if has_r2 else "") + " accuracy |"
        extra = task == "rank"
        if extra:
            head += " mean abs. rank error |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for row in rows:
            if row["task"] != task:
                continue
            cells = [str(row["length"]), MIXER_LABELS[row["mixer"]],
                     f"{row['loss_mean']:.4g} ± {row['loss_std']:.2g}"]
            if has_r2:
                cells.append(f"{row['r2_mean']:.4f} ± {row['r2_std']:.4f}")
            cells.append(f"{100 * row['accuracy_mean']:.1f}% ± {100 * row['accuracy_std']:.1f}")
            if extra:
                cells.append(f"{row['mean_abs_rank_error_mean']:.2f} ± {row['mean_abs_rank_error_std']:.2f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _write_atomic(path: str, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(path, write)


def run(config: Config, out: str, command: str, name: str = "universal_approximation", log=print) -> dict:
    t_start = time.perf_counter()
    parameters = {m: count_parameters(build_model(m, config.dim, config.depth, config.heads, config.pom_mlp_ratio))
                  for m in config.mixers}
    log("parameters: " + ", ".join(f"{m} {p:,}" for m, p in parameters.items()))
    runs = []
    for task in config.tasks:
        for length in config.lengths:
            eval_set = eval_set_for(task, length, config)
            for mixer in config.mixers:
                for seed in config.seeds:
                    r = train_one(task, length, mixer, seed, config, eval_set)
                    runs.append(r)
                    extra = f" R2 {r['r2']:.4f}" if "r2" in r else ""
                    log(f"{task:>6} N={length:<4} {mixer:>9} seed {seed}: loss {r['loss']:.4g}{extra} "
                        f"acc {100 * r['accuracy']:.1f}% ({r['train_seconds']:.1f} s)")
    rows = summarise(runs)
    meta = {
        "command": command,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "total_seconds": time.perf_counter() - t_start,
        "config": asdict(config),
        "parameters": parameters,
    }
    result = {**meta, "summary": rows, "runs": runs}
    _write_atomic(os.path.join(out, name + ".json"), json.dumps(result, indent=1) + "\n")
    _write_atomic(os.path.join(out, name + ".md"), markdown(rows, meta) + "\n")
    log(f"wrote {os.path.join(out, name)}.md/.json in {meta['total_seconds']:.0f} s")
    return result


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _choice_list(choices):
    def parse(text: str) -> list[str]:
        values = [v for v in text.split(",") if v]
        for v in values:
            if v not in choices:
                raise argparse.ArgumentTypeError(f"{v!r} is not one of {', '.join(choices)}")
        return values
    return parse


def main(argv: list[str] | None = None) -> dict:
    d = Config()
    p = argparse.ArgumentParser(
        description="Train equal-size PoM, attention and no-mixing transformers on set-to-set tasks "
        "(token rank, distance to the median, above the mean) over seeds and sequence lengths; "
        "write a markdown table and JSON of held-out losses and accuracies.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--tasks", type=_choice_list(TASKS), default=d.tasks, help=f"comma-separated, of {', '.join(TASKS)}")
    p.add_argument("--lengths", type=_int_list, default=d.lengths, help="comma-separated sequence lengths N")
    p.add_argument("--mixers", type=_choice_list(MIXERS), default=d.mixers,
                   help=f"comma-separated, of {', '.join(MIXERS)} ('none' = the control without mixing)")
    p.add_argument("--seeds", type=_int_list, default=d.seeds, help="comma-separated seeds (init and data)")
    p.add_argument("--dim", type=int, default=d.dim, help="token width D")
    p.add_argument("--depth", type=int, default=d.depth, help="number of blocks L")
    p.add_argument("--heads", type=int, default=d.heads, help="attention heads")
    p.add_argument("--pom-mlp-ratio", type=float, default=d.pom_mlp_ratio,
                   help="MLP ratio of the PoM model; the others' MLPs are sized to its parameter count")
    p.add_argument("--steps", type=int, default=d.steps, help="training steps per run")
    p.add_argument("--tokens-per-step", type=int, default=d.tokens_per_step,
                   help="tokens per batch (batch = this / N sequences)")
    p.add_argument("--lr", type=float, default=d.lr, help="peak AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--eval-tokens", type=int, default=d.eval_tokens, help="tokens in the held-out set per (task, N)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--quick", action="store_true",
                   help="smoke run in seconds: N=8, seed 0, 30 steps, small eval set (overrides those options)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks", "results"),
                   help="folder for universal_approximation.md/.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = Config(tasks=args.tasks, lengths=args.lengths, mixers=args.mixers, seeds=args.seeds, dim=args.dim,
                    depth=args.depth, heads=args.heads, pom_mlp_ratio=args.pom_mlp_ratio, steps=args.steps,
                    tokens_per_step=args.tokens_per_step, lr=args.lr, weight_decay=args.weight_decay,
                    warmup_steps=min(args.warmup_steps, args.steps), eval_tokens=args.eval_tokens)
    if args.quick:
        config.lengths, config.seeds, config.steps, config.warmup_steps = [8], [0], 30, 5
        config.tokens_per_step, config.eval_tokens = 512, 1024
    for name in ("dim", "depth", "heads", "steps", "tokens_per_step", "eval_tokens"):
        if getattr(config, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(config, name)}")
    if any(n < 2 for n in config.lengths):
        raise SystemExit(f"--lengths: every N must be >= 2, got {config.lengths}")
    command = "python experiments/universal_approximation.py " + " ".join(sys.argv[1:] if argv is None else argv)
    return run(config, os.path.normpath(args.out), command.strip())


if __name__ == "__main__":
    main()
