"""The tiers select tests by their marks (``make test-fast``: ``-m "not slow and not e2e"``); a test that
starts gloo ranks without the ``distributed`` mark is refused, so it cannot land in the wrong tier unseen."""

import pytest

import harness


def test_an_unmarked_test_cannot_start_ranks():
    with pytest.raises(RuntimeError, match="not marked `distributed`"):
        harness.run_distributed(print, 2)


@pytest.mark.distributed
def test_a_distributed_test_sees_its_mark():
    assert "distributed" in harness.current_marks
