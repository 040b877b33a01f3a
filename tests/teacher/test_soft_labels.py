import numpy as np
import pytest

from pipeline.teacher.soft_labels import SoftLabelError, split_flat_logprobs
from schemas import topk_id_dtype


def flat(positions):
    """Build vLLM-style flat lists from [(sampled_id, sampled_lp, [(id, lp)] * k)]."""
    ids, lps, starts, ends, sampled = [], [], [], [], []
    for sid, slp, top in positions:
        starts.append(len(ids))
        ids += [sid] + [t for t, _ in top]
        lps += [slp] + [lp for _, lp in top]
        ends.append(len(ids))
        sampled.append(sid)
    return ids, lps, starts, ends, sampled


def test_sampled_token_in_topk_is_not_double_counted():
    # position 0: sampled token 5 is also rank 1; position 1: sampled 9 is outside the top-2
    ids, lps, starts, ends, sampled = flat([(5, -0.2, [(5, -0.2), (3, -1.9)]),
                                            (9, -6.0, [(1, -0.1), (2, -2.5)])])
    top_ids, top_lps, s = split_flat_logprobs(ids, lps, starts, ends, sampled, k=2)
    assert top_ids.tolist() == [[5, 3], [1, 2]]
    np.testing.assert_allclose(top_lps, [[-0.2, -1.9], [-0.1, -2.5]], rtol=1e-6)
    np.testing.assert_allclose(s, [-0.2, -6.0], rtol=1e-6)
    # probability mass of each stored row stays <= 1: nothing counted twice
    assert np.all(np.exp(top_lps).sum(axis=1) <= 1.0)


def test_unsorted_rows_are_sorted_descending():
    ids, lps, starts, ends, sampled = flat([(4, -1.0, [(7, -3.0), (4, -1.0), (8, -2.0)])])
    top_ids, top_lps, _ = split_flat_logprobs(ids, lps, starts, ends, sampled, k=3)
    assert top_ids.tolist() == [[4, 8, 7]]
    assert top_lps.tolist() == [[-1.0, -2.0, -3.0]]


def test_wrong_entry_count_names_the_position():
    ids, lps, starts, ends, sampled = flat([(1, -1.0, [(1, -1.0), (2, -2.0)]),
                                            (1, -1.0, [(1, -1.0)])])
    with pytest.raises(SoftLabelError, match="position 1 has 2 logprob entries"):
        split_flat_logprobs(ids, lps, starts, ends, sampled, k=2)


def test_first_entry_must_be_the_sampled_token():
    ids, lps, starts, ends, _ = flat([(1, -1.0, [(1, -1.0), (2, -2.0)])])
    with pytest.raises(SoftLabelError, match="not the sampled token"):
        split_flat_logprobs(ids, lps, starts, ends, [2], k=2)


def test_empty_completion_gives_empty_arrays():
    top_ids, top_lps, s = split_flat_logprobs([], [], [], [], [], k=3)
    assert top_ids.shape == (0, 3) and top_lps.shape == (0, 3) and s.shape == (0,)


@pytest.mark.parametrize("vocab,dtype", [(49152, np.uint16), (65536, np.uint16),
                                         (65537, np.uint32), (151936, np.uint32)])
def test_topk_id_dtype_fits_the_vocabulary(vocab, dtype):
    assert topk_id_dtype(vocab) == dtype
