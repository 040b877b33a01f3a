"""`--hidden-layers eagle3`: the teacher states an EAGLE-3 draft model trains on.

EAGLE-3 reads the residual stream *entering* three blocks of an L-block teacher,
blocks 2, L // 2 and L - 3 (vLLM's and speculators' default aux layers), plus the
last block's output *before* the final norm. In offline-kd's numbering (transformers'
`output_hidden_states`: 0 = embeddings, hidden state i = output of block i - 1 =
input of block i, and the stored L (`--hidden-layers -1`) is *after* the final norm)
the three aux states are the absolute layers 2, L // 2 and L - 3 unchanged. The
pre-norm last state has no index there (transformers replaces the last entry by
its normed value), so it is captured with a forward hook on the final norm's input
and stored under its own key, `PRE_NORM_LAST`, in the dataset `hidden/final_pre_norm`.

Which trainer wants which: speculators applies the teacher's norm and head itself
(`verifier_norm`), so it reads the pre-norm state; SpecForge and ModelOpt expect the
post-norm state, which is `norm(pre_norm)` (add `-1` to a layer list to store it too).

    >>> eagle3_layers(30)
    [2, 15, 27, 9999]
    >>> eagle3_layers(32)[:3], aux_layers(32)
    ([2, 16, 29], [2, 16, 29])
"""

from __future__ import annotations

from schemas.config_base import ConfigError

EAGLE3 = "eagle3"
"""The --hidden-layers preset name."""
PRE_NORM_LAST = 9999
"""Key of the last block's output before the final norm, in `hidden_layers` lists and
`Sample.hidden` (past every real layer index, so it sorts last, as trainers stack it)."""
PRE_NORM_DATASET = "hidden/final_pre_norm"
"""Its shard dataset (the int8 scales: `hidden/final_pre_norm_scale`)."""


def aux_layers(num_layers: int) -> list[int]:
    """The three absolute hidden-state indices EAGLE-3 fuses: inputs of blocks 2, L/2, L-3."""
    layers = [2, num_layers // 2, num_layers - 3]
    if len(set(layers)) < 3 or layers != sorted(layers):
        raise ConfigError(f"--hidden-layers eagle3 needs a teacher with at least 7 layers "
                          f"(three distinct aux layers 2, L/2, L-3), this one has {num_layers}")
    return layers


def eagle3_layers(num_layers: int) -> list[int]:
    """Every key `--hidden-layers eagle3` stores, in the order trainers stack them."""
    return aux_layers(num_layers) + [PRE_NORM_LAST]


def is_pre_norm(layer: int) -> bool:
    return layer == PRE_NORM_LAST
