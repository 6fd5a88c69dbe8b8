"""The seeded draws of `cgd build`: the critique derangement of `irrelevant_critique` and the verdict-ratio subsets.

Pure functions of their arguments and a seed; nothing here reads or writes files.
"""

from __future__ import annotations

import random
import re
from collections.abc import Hashable, Sequence

_RATIO = re.compile(r"\s*(\d{1,3})\s*/\s*(\d{1,3})\s*")


def parse_ratio(text: str) -> tuple[int, int]:
    """
    Parses a right/wrong ratio written `"R/W"` in percent, e.g. `"75/25"`.

    Returns:
        `tuple[int, int]`: the percentages of right and of wrong initial answers.

    Raises:
        `ValueError`: when the text is not two whole percentages that add up to 100.
    """
    match = _RATIO.fullmatch(str(text))
    if not match or int(match[1]) + int(match[2]) != 100:
        raise ValueError(f"Bad ratio {text!r}: write it as 'R/W' in percent with R + W = 100, e.g. '75/25'.")
    return int(match[1]), int(match[2])


def ratio_name(ratio: tuple[int, int]) -> str:
    """File stem of a ratio subset: `(75, 25)` -> `"ratio_75_25"`."""
    return f"ratio_{ratio[0]}_{ratio[1]}"


def ratio_counts(size: int, ratio: tuple[int, int]) -> tuple[int, int]:
    """Right and wrong records of a subset of `size` records: `R%` of `size` rounded half up, and the rest."""
    right = (ratio[0] * size + 50) // 100
    return right, size - right


def largest_ratio_size(ratios: Sequence[tuple[int, int]], available_right: int, available_wrong: int) -> int:
    """The largest subset size at which every ratio can be drawn from the available right and wrong records."""
    size = available_right + available_wrong
    # Both counts grow with the size, so the first size that fits every ratio, going down, is the largest.
    while size > 0:
        counts = [ratio_counts(size, ratio) for ratio in ratios]
        if all(right <= available_right and wrong <= available_wrong for right, wrong in counts):
            return size
        size -= 1
    return 0


def sample_ratio_subsets(
    verdicts: Sequence[str | None], ratios: Sequence[tuple[int, int]], size: int, seed: int
) -> dict[tuple[int, int], list[int]]:
    """
    Draws, for each ratio, `size` records with the ratio's share of right and wrong verdicts.

    The right and the wrong records are shuffled once with the seed and each subset takes the first ones it needs,
    so subsets are nested (the right records of `75/25` are among those of `100/0`): ratios then differ only in the
    mix, not in which questions happened to be drawn. Records without a verdict are never drawn.

    Args:
        verdicts (`Sequence[str | None]`): Verdict of each record.
        ratios (`Sequence[tuple[int, int]]`): Ratios as parsed by [`parse_ratio`].
        size (`int`): Records per subset.
        seed (`int`): Random seed.

    Returns:
        `dict[tuple[int, int], list[int]]`: the record indices of each subset, in input order.

    Raises:
        `ValueError`: when a ratio needs more right or wrong records than there are.
    """
    right = [index for index, verdict in enumerate(verdicts) if verdict == "right"]
    wrong = [index for index, verdict in enumerate(verdicts) if verdict == "wrong"]
    rng = random.Random(seed)
    right, wrong = rng.sample(right, len(right)), rng.sample(wrong, len(wrong))
    subsets = {}
    for ratio in ratios:
        n_right, n_wrong = ratio_counts(size, ratio)
        if n_right > len(right) or n_wrong > len(wrong):
            raise ValueError(
                f"The ratio {ratio[0]}/{ratio[1]} at ratio_size={size} needs {n_right} records with a right and "
                f"{n_wrong} with a wrong verdict, but there are {len(right)} right and {len(wrong)} wrong. Lower "
                f"`ratio_size` (at most {largest_ratio_size(ratios, len(right), len(wrong))} here) or leave it unset."
            )
        subsets[ratio] = sorted(right[:n_right] + wrong[:n_wrong])
    return subsets


def derangement(n: int, seed: int, groups: Sequence[Hashable] | None = None) -> list[int]:
    """
    A seeded permutation without fixed points: record `i` receives the critique of record `sources[i] != i`.

    With `groups` (e.g. the critique texts), it also avoids giving a record a critique of its own group: records are
    laid out group by group (groups and members in seeded random order, the largest group first) and each receives
    from the record as many places further as the largest group is long. When no group holds more than half of the
    records, no record receives from its own group; otherwise the number that must do so (`2 * largest - n`) is the
    minimum possible. Without groups this is a uniformly random single cycle.

    Args:
        n (`int`): Number of records, at least 2.
        seed (`int`): Random seed; the same seed gives the same permutation.
        groups (`Sequence[Hashable]`, *optional*): Group of each record.

    Returns:
        `list[int]`: `sources`, where `sources[i]` is the record whose critique record `i` receives.

    Raises:
        `ValueError`: when `n < 2` or `groups` does not have `n` entries.
    """
    if n < 2:
        raise ValueError(f"A derangement needs at least 2 records, got {n}.")
    keys = list(range(n)) if groups is None else list(groups)
    if len(keys) != n:
        raise ValueError(f"`groups` has {len(keys)} entries for {n} records.")
    members: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        members.setdefault(key, []).append(index)
    rng = random.Random(seed)
    blocks = list(members.values())
    rng.shuffle(blocks)
    for block in blocks:
        rng.shuffle(block)
    largest = max(range(len(blocks)), key=lambda position: len(blocks[position]))
    blocks.insert(0, blocks.pop(largest))
    order = [index for block in blocks for index in block]
    shift = len(blocks[0]) if len(blocks[0]) < n else 1  # one group: every shift collides, any derangement will do
    sources = [0] * n
    for position, index in enumerate(order):
        sources[index] = order[(position + shift) % n]
    return sources
