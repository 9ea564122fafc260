"""How much memory a run's statistics need, so a run that cannot fit is refused up front.

A VAR's statistics are (1 + V * L)^2 numbers per batch and per prefix: at 3,000 series
and 5 lags that is 1.8 GB each, and a run needs several of them at once. Refusing before
any data is read beats failing (or swapping) an hour into the run.
"""

from __future__ import annotations

from typing import Final

from recursive_training.exceptions import ConfigError
from recursive_training.sizes import show_bytes, usable_memory

BYTES_PER_NUMBER: Final = 8
# Systems of p x p the busiest process holds at once while folding a batch into the prefix
# and solving it: the prefix, the arriving batch, their decayed sum, then the penalized
# system, its Jacobi-scaled copy and the factorization's own copy beside the prefix.
VAR_SYSTEMS_AT_ONCE: Final = 5
# Share of the machine's memory a run may plan for when --max-memory is not given:
# the rest is for the data windows, the OS, and other processes.
DEFAULT_MEMORY_SHARE: Final = 0.5
FALLBACK_MEMORY: Final = 4 * 2**30


# Memory a task gives the derived arrays of one shard of series (changes, masks, targets,
# weighted columns, the pooled scale sums), on top of the window it loaded: it bounds what
# a task holds whatever the number of series.
SHARD_BYTES: Final = 256 * 2**20
# Float-sized arrays of (rows x series) a shard's statistics or predictions hold at once.
DERIVED_ARRAYS: Final = 10


def series_per_shard(window_rows: int) -> int:
    """How many series a task processes at once so their derived arrays fit SHARD_BYTES."""
    return max(1, SHARD_BYTES // (BYTES_PER_NUMBER * DERIVED_ARRAYS * max(window_rows, 1)))


def var_memory_bytes(n_variables: int, lags: int, batch_rows: int) -> int:
    """Peak bytes of a VAR run in one process: the p x p systems of the statistics and
    solve, the p x V right-hand sides, and one batch's design (features and weighted copy)."""
    p = 1 + n_variables * lags
    systems = VAR_SYSTEMS_AT_ONCE * (p * p + p * n_variables)
    design = 2 * batch_rows * p
    return BYTES_PER_NUMBER * (systems + design)


def default_memory_budget() -> int:
    """Half of the memory this process may use (4 GiB where it cannot be read)."""
    total = usable_memory()
    return int(total * DEFAULT_MEMORY_SHARE) if total else FALLBACK_MEMORY


def check_var_memory(n_variables: int, lags: int, batch_rows: int, budget: int) -> None:
    """Refuse a VAR whose statistics would not fit ``budget`` bytes, in one line."""
    need = var_memory_bytes(n_variables, lags, batch_rows)
    if need <= budget:
        return
    p = 1 + n_variables * lags
    raise ConfigError(
        f"--model var with {n_variables:,} variables and {lags} lags needs about "
        f"{show_bytes(need)} ({p:,} x {p:,} statistics per batch and prefix), over "
        f"--max-memory {show_bytes(budget)}; use --model ar (one model per series) or "
        "--model pooled (one model shared by all series), whose memory grows linearly with "
        "the number of series, or raise --max-memory"
    )
