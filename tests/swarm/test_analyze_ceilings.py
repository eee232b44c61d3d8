"""Hit-rate ceilings, refresh counts and working sets; the published figures of the shipped traces."""

import math

import numpy as np
import pytest

from loadtest.analyze.ceilings import BlockUses, ceilings, parse_ttl, working_set
from loadtest.analyze.events import WekaOptions, load_uses, weka_uses
from loadtest.swarm.traces import load_trace
from tests.swarm.swarm_helpers import MOONCAKE_CONVERSATION, MOONCAKE_SYNTHETIC, WEKA_DIR, needs_traces

INF = math.inf


def uses(*requests: tuple[float, list[int]]) -> BlockUses:
    return BlockUses.from_requests(
        [t for t, _ in requests], [np.asarray(ids) for _, ids in requests], [16] * len(requests)
    )


def test_ttl_counts_a_block_only_if_its_last_use_was_recent_enough():
    stream = uses((0, [1, 2]), (50, [1, 2, 3]), (200, [1, 3]), (210, [4]))
    by_ttl = {c.ttl_s: c for c in ceilings(stream, (60.0, 300.0, INF))}
    # 60 s: at 50 both 1 and 2 hit; at 200 block 1 (last used 50) and 3 (last used 50) expired.
    assert by_ttl[60.0].hit_blocks == 2 and by_ttl[60.0].block_uses == 8
    assert by_ttl[300.0].hit_blocks == 4 and by_ttl[INF].hit_blocks == 4
    assert by_ttl[INF].distinct_blocks == 4
    # Prefilled again after expiry: 1 and 3 at 200 with a 60 s TTL, over 4 distinct blocks.
    assert by_ttl[60.0].prefills == 6 and by_ttl[60.0].refresh_count == pytest.approx(0.5)
    assert by_ttl[INF].refresh_count == 0


def test_every_use_refreshes_a_block_and_time_order_wins_over_file_order():
    stream = uses((100, [7]), (0, [7]), (50, [7]), (160, [7]))
    (ceiling,) = ceilings(stream, (60.0,))
    assert ceiling.hit_blocks == 3  # 0 -> 50 -> 100 -> 160, each within 60 s of the one before


def test_working_set_counts_live_blocks_once():
    stream = uses((0, [1, 2]), (10, [1]), (100, [3]))
    live = working_set(stream, (30.0, INF), points=11)  # grid 0, 10, ..., 100
    assert list(live.blocks[INF]) == [2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3]
    # TTL 30: block 2 lives [0, 30), block 1 [0, 40), block 3 from 100.
    assert list(live.blocks[30.0]) == [2, 2, 2, 1, 0, 0, 0, 0, 0, 0, 1]
    assert live.tokens[30.0][0] == 32


def test_ttls_parse_from_the_command_line():
    assert parse_ttl("60") == 60.0 and parse_ttl("300s") == 300.0 and parse_ttl("inf") == INF
    with pytest.raises(ValueError):
        parse_ttl("-5")


def rates(stream: BlockUses) -> dict[float, float]:
    return {c.ttl_s: round(100 * c.hit_rate, 1) for c in ceilings(stream, (60.0, 300.0, INF))}


@needs_traces
def test_mooncake_conversation_ceilings_match_the_published_figures():
    _, stream = load_uses([MOONCAKE_CONVERSATION])
    assert rates(stream) == {60.0: 10.3, 300.0: 28.8, INF: 36.6}


@needs_traces
def test_mooncake_synthetic_ceilings_match_the_published_figures():
    _, stream = load_uses([MOONCAKE_SYNTHETIC])
    assert rates(stream) == {60.0: 32.2, 300.0: 58.4, INF: 64.0}


@pytest.fixture(scope="module")
def weka_conversations():
    return load_trace([WEKA_DIR]).conversations


@needs_traces
def test_weka_ceilings_match_the_published_figures(weka_conversations):
    assert len(weka_conversations) == 120
    top_level = weka_uses(weka_conversations, WekaOptions(include_subagents=False))
    assert top_level.size == 9_609_212
    assert rates(top_level) == {60.0: 75.1, 300.0: 89.7, INF: 94.5}
    with_subagents = weka_uses(weka_conversations, WekaOptions(include_subagents=True))
    assert with_subagents.size == 9_665_455
    (infinite,) = ceilings(with_subagents, (INF,))
    assert round(100 * infinite.hit_rate, 1) == 94.4
    # Sharing the system/tool prefix across conversations can only add hits.
    shared = weka_uses(weka_conversations, WekaOptions(include_subagents=True, shared_prefix=True))
    assert ceilings(shared, (INF,))[0].hit_blocks > infinite.hit_blocks
