"""Re-pack one unpacked batch into fewer, longer rows: the same sequences, the same loss, less padding.

The paper's code feeds 32 examples a step, each padded to the batch's longest row; on SVAMP
(inputs ~40 tokens, the longest of 32 ~64) that is 40% padding, and padding to a power-of-two
bucket (input_pipeline.trim_padding) makes it 60%. seqio's packing (PACK=True) removes the
padding but changes what a step holds: a fixed number of full rows, so a varying number of
examples. `pack_batch` keeps the batch -- exactly the sequences the unpacked pipeline put in it,
so examples per step, data order and resumption are unchanged -- and lays them out packed:

- row capacity: inputs the power-of-two bucket of max(longest input, ROW_SEQUENCES x the mean
  input); targets a multiple of 16 holding the row's share of target tokens with some slack (or
  the longest target); both at most the unpacked widths;
- first-fit decreasing by input length, a sequence goes where both its input and its target fit;
- the row count rounded up to a multiple of `row_multiple` (the data-parallel shards; empty rows
  are all padding);
- with `decoder_group` G > 1 and short targets (G x the row target capacity at most the row
  input capacity: labels, not rationales), one decoder row holds the targets of G encoder rows:
  a row's targets vary more than its inputs (SVAMP's labels fill 57% of 48-token target rows),
  and the sum over G rows varies less, so balanced groups of 2 need about a quarter fewer decoder
  positions (82% full). Rows are grouped by balancing their target tokens (largest first, into
  the lightest group) and laid out group by group: decoder row j holds encoder rows
  [j * G, (j + 1) * G), G = ceil(rows / decoder rows), the last group shorter when G does not
  divide the row count; segment ids are numbered across a group. The model lays the group's
  encoder rows end to end for the cross-attention (distill/models/t5.py, `_group_encoder_rows`).

The result is THE packed training format (distill/feature_converters.py): segment ids and
positions per token, decoder inputs restarting at 0 per segment. T5's attention is relative
and masked by segment, so each sequence is computed exactly as in its own row: the loss and
gradients equal the unpacked batch's up to float summation order (tests/test_batch_packing.py).
Capacities and row counts are rounded, so a run compiles a handful of shapes.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# Aim for about this many mean-length sequences per row. Narrower rows (more of them) compute less attention
# (quadratic in the row's width, and mostly across segments, masked): on SVAMP 2 gives 128-token rows
# where 4 gave 256, and the tiny T5 train step ran 5-12% faster for the same examples (README.md).
ROW_SEQUENCES = 2
TARGET_SLACK = 1.15  # target room over the row's expected share, so inputs, not targets, fill a row
TARGET_STEP = 16  # target capacity in steps of 16, not powers of two: the decoder costs more per token
SMALLEST_BUCKET = 16
# Encoder rows per decoder row. Only without gradient accumulation: its microbatches take strided rows
# (distill/trainer.py), which would split a group; `decoder_group` says which applies.
DECODER_GROUP = 2

# The training batch's features (distill/feature_converters.py): every batch has these, packed
# rows also the per-token segment ids and positions.
UNPACKED_FEATURES = ("encoder_input_tokens", "decoder_target_tokens", "decoder_input_tokens",
                     "decoder_loss_weights", "decoder_task_ids")
PACKING_FEATURES = ("encoder_segment_ids", "encoder_positions", "decoder_segment_ids", "decoder_positions")


def bucket_length(needed: int, limit: int, smallest: int = SMALLEST_BUCKET) -> int:
    """The smallest power of two >= needed (at least `smallest`), capped at `limit`."""
    size = smallest
    while size < needed:
        size *= 2
    return min(size, limit)


def row_capacities(input_lengths: np.ndarray, target_lengths: np.ndarray, *, input_width: int,
                   target_width: int) -> tuple[int, int]:
    """(input, target) tokens per packed row for sequences of these lengths (see the module docstring)."""
    inputs = bucket_length(max(int(input_lengths.max()), int(np.ceil(ROW_SEQUENCES * input_lengths.mean()))),
                           input_width)
    share = TARGET_SLACK * inputs * target_lengths.sum() / max(1, input_lengths.sum())
    targets = -(-max(int(target_lengths.max()), int(np.ceil(share))) // TARGET_STEP) * TARGET_STEP
    return inputs, min(targets, target_width)


def assign_rows(input_lengths: np.ndarray, target_lengths: np.ndarray, capacity: tuple[int, int]) -> list[list[int]]:
    """Sequence indices per row, first-fit decreasing by input length; each row in input order."""
    rows: list[list[int]] = []
    room: list[list[int]] = []
    for index in sorted(range(len(input_lengths)), key=lambda i: (-int(input_lengths[i]), i)):
        need = (int(input_lengths[index]), int(target_lengths[index]))
        for row, free in enumerate(room):
            if need[0] <= free[0] and need[1] <= free[1]:
                rows[row].append(index)
                free[0] -= need[0]
                free[1] -= need[1]
                break
        else:
            rows.append([index])
            room.append([capacity[0] - need[0], capacity[1] - need[1]])
    return [sorted(row) for row in rows]


def decoder_group(*, pack_batch: bool, num_microbatches: int = 1) -> int:
    """A run's `decoder_group` (TrainDataSpec): DECODER_GROUP for re-packed batches without gradient
    accumulation, else 1."""
    return DECODER_GROUP if pack_batch and num_microbatches == 1 else 1


def group_rows(row_targets: list[int], groups: int) -> list[list[int]]:
    """Row indices per group, balancing target tokens: groups of ceil(rows / groups), the last one
    the rest; largest rows first, each into the lightest group with room (ties: the lower index)."""
    size = -(-len(row_targets) // groups)
    room = [size] * (groups - 1) + [len(row_targets) - size * (groups - 1)]
    members: list[list[int]] = [[] for _ in range(groups)]
    load = [0] * groups
    for row in sorted(range(len(row_targets)), key=lambda r: (-row_targets[r], r)):
        group = min((g for g in range(groups) if len(members[g]) < room[g]), key=lambda g: (load[g], g))
        members[group].append(row)
        load[group] += row_targets[row]
    return [sorted(group) for group in members]


def pack_batch(batch: Mapping[str, np.ndarray], *, row_multiple: int = 1,
               decoder_group: int = 1) -> dict[str, np.ndarray]:
    """An unpacked batch (encoder_input_tokens, decoder_* [rows, width]) as packed rows.

    Sequences are read up to their last non-padding token (inputs end in EOS, targets too);
    all-padding rows are dropped. Every key of the unpacked format is carried, plus
    encoder/decoder segment ids and positions. `decoder_group` > 1 puts the targets of that
    many encoder rows in one decoder row where decoder_group x the row target capacity is at
    most the row input capacity (the module docstring; the row count is then a multiple of
    decoder_group x row_multiple when row_multiple > 1, so no group straddles two data-parallel
    shards).
    """
    if "encoder_segment_ids" in batch:
        raise ValueError("pack_batch takes unpacked rows; this batch is packed already")
    if decoder_group < 1 or row_multiple < 1:
        raise ValueError(f"decoder_group and row_multiple must be >= 1, got {decoder_group}, {row_multiple}")
    inputs, targets = batch["encoder_input_tokens"], batch["decoder_target_tokens"]
    input_lengths = row_lengths(inputs)
    target_lengths = row_lengths(targets)
    used = np.flatnonzero((input_lengths > 0) | (target_lengths > 0))
    if used.size == 0:
        used = np.arange(1)
    capacity = row_capacities(input_lengths[used], target_lengths[used], input_width=inputs.shape[1],
                              target_width=targets.shape[1])
    rows = assign_rows(input_lengths[used], target_lengths[used], capacity)
    # Grouped only while a decoder row stays within an encoder row's width (labels, not rationales):
    # wider rows would cost more in attention than the positions they save.
    group_size = decoder_group if decoder_group * capacity[1] <= capacity[0] else 1
    multiple = row_multiple * group_size if row_multiple > 1 else 1
    rows += [[] for _ in range(-len(rows) % multiple)]
    if group_size == 1:
        groups, width = [[row] for row in range(len(rows))], capacity[1]
    else:
        row_targets = [int(sum(target_lengths[used[m]] for m in members)) for members in rows]
        groups = group_rows(row_targets, -(-len(rows) // group_size))
        width = -(-max(sum(row_targets[r] for r in g) for g in groups) // TARGET_STEP) * TARGET_STEP
    packed = {name: np.zeros((len(rows) if name.startswith("encoder") else len(groups),
                              capacity[0] if name.startswith("encoder") else width), np.int32)
              for name in (*batch.keys(), *PACKING_FEATURES)}
    encoder_row = 0
    for decoder_row, group in enumerate(groups):
        segment, decoder_offset = 0, 0
        for members in (rows[r] for r in group):
            encoder_offset = 0
            for member in members:
                segment += 1
                source = int(used[member])
                for side, row, length in (("encoder", encoder_row, int(input_lengths[source])),
                                          ("decoder", decoder_row, int(target_lengths[source]))):
                    start = encoder_offset if side == "encoder" else decoder_offset
                    span = slice(start, start + length)
                    for name, value in batch.items():
                        if name.startswith(side):
                            packed[name][row, span] = value[source, :length]
                    packed[f"{side}_segment_ids"][row, span] = segment
                    packed[f"{side}_positions"][row, span] = np.arange(length)
                encoder_offset += int(input_lengths[source])
                decoder_offset += int(target_lengths[source])
            encoder_row += 1
    return packed


def row_lengths(tokens: np.ndarray) -> np.ndarray:
    """Per row: the index + 1 of its last non-padding token (0 for an all-padding row)."""
    nonzero = tokens != 0
    last = tokens.shape[1] - np.argmax(nonzero[:, ::-1], axis=1)
    return np.where(nonzero.any(axis=1), last, 0)
