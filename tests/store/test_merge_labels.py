"""kd merge-labels: closed-form mixtures of two tiny teachers (both rules, tails), refusals,
and a merged output that kd verify accepts."""


import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.store.label_mixture import mix_labels
from pipeline.store.manifest import Manifest, read_manifest, write_manifest
from pipeline.store.output_alignment import MisalignedOutputs
from pipeline.store.sample import Sample
from pipeline.store.sample_index import merge_index, write_index_part
from pipeline.store.shard_reader import ShardReader
from pipeline.store.shard_writer import ShardAttrs, write_shard
from stages.teacher.merge_labels import run_merge
from pipeline.teacher.sample_filter import filter_samples, index_table
from pipeline.teacher.kept_shard import KEEP_ALL
from schemas.config_base import ConfigError
from schemas.merge_config import MergeConfig
from stages.cli.main import main

V, K = 10, 2
# Two teachers, two labelled positions (tokens 2 and 5 of the sample [7, 2, 5]).
# Teacher A: row 0 {1: .5, 2: .3} tail .2; row 1 {4: .4, 5: .35} tail .25.
# Teacher B: row 0 {2: .6, 3: .35} tail .05; row 1 {6: .5, 5: .3} tail .2.
A_IDS, A_P = [[1, 2], [4, 5]], [[0.5, 0.3], [0.4, 0.35]]
B_IDS, B_P = [[2, 3], [6, 5]], [[0.6, 0.35], [0.5, 0.3]]
A_SAMPLED, B_SAMPLED = [0.3, 0.35], [0.6, 0.3]     # each teacher's p of tokens 2 and 5
W = (0.7, 0.3)


def spread(tail):  # a teacher's tail over the V - K ids it did not store
    return tail / (V - K)


# Weighted probability mean, by hand.
MEAN_IDS = [[2, 1], [5, 4]]
MEAN_P = [[0.7 * 0.3 + 0.3 * 0.6, 0.7 * 0.5 + 0.3 * spread(0.05)],         # 0.39, 0.351875
          [0.7 * 0.35 + 0.3 * 0.3, 0.7 * 0.4 + 0.3 * spread(0.2)]]         # 0.335, 0.2875
MEAN_SAMPLED = [0.7 * 0.3 + 0.3 * 0.6, 0.7 * 0.35 + 0.3 * 0.3]


def geo(pa, pb):
    return pa ** 0.7 * pb ** 0.3


# Geometric mixture, by hand: candidates, then the V - |U| = 7 ids no teacher stored.
G0 = {1: geo(0.5, spread(0.05)), 2: geo(0.3, 0.6), 3: geo(spread(0.2), 0.35)}
Z0 = sum(G0.values()) + 7 * geo(spread(0.2), spread(0.05))
G1 = {4: geo(0.4, spread(0.2)), 5: geo(0.35, 0.3), 6: geo(spread(0.25), 0.5)}
Z1 = sum(G1.values()) + 7 * geo(spread(0.25), spread(0.2))


def test_mean_rule_closed_form_with_tails():
    ids, lps, sampled = mix_labels([np.array(A_IDS), np.array(B_IDS)],
                                   [np.log(A_P), np.log(B_P)], W, V, K, "mean",
                                   [np.log(A_SAMPLED), np.log(B_SAMPLED)])
    assert ids.tolist() == MEAN_IDS
    np.testing.assert_allclose(np.exp(lps), MEAN_P, rtol=1e-12)
    np.testing.assert_allclose(np.exp(sampled), MEAN_SAMPLED, rtol=1e-12)
    # the mixture's tail is what the kept ids leave: 1 - .39 - .351875 (row 0)
    assert 1 - np.exp(lps[0]).sum() == pytest.approx(0.258125, abs=1e-12)
    # the whole mixture sums to 1: the kept ids, the dropped candidate 3, the 7 others
    rest = 0.7 * spread(0.2) + 0.3 * 0.35 + 7 * (0.7 * spread(0.2) + 0.3 * spread(0.05))
    assert np.exp(lps[0]).sum() + rest == pytest.approx(1.0, abs=1e-12)


def test_geometric_rule_closed_form_renormalised_over_the_vocabulary():
    ids, lps, sampled = mix_labels([np.array(A_IDS), np.array(B_IDS)],
                                   [np.log(A_P), np.log(B_P)], W, V, K, "geometric",
                                   [np.log(A_SAMPLED), np.log(B_SAMPLED)])
    top0 = sorted(G0, key=G0.get, reverse=True)[:K]
    top1 = sorted(G1, key=G1.get, reverse=True)[:K]
    assert ids.tolist() == [top0, top1] == [[2, 1], [5, 4]]
    np.testing.assert_allclose(np.exp(lps), [[G0[v] / Z0 for v in top0], [G1[v] / Z1 for v in top1]],
                               rtol=1e-12)
    np.testing.assert_allclose(np.exp(sampled), [geo(0.3, 0.6) / Z0, geo(0.35, 0.3) / Z1],
                               rtol=1e-12)


def test_one_teacher_with_all_the_weight_is_itself():
    ids, lps = mix_labels([np.array(A_IDS), np.array(B_IDS)], [np.log(A_P), np.log(B_P)],
                          (1.0 - 1e-12, 1e-12), V, K, "mean")
    assert ids.tolist() == [[1, 2], [4, 5]]
    np.testing.assert_allclose(np.exp(lps), A_P, rtol=1e-9)


@pytest.mark.parametrize("weights,msg", [("0.7,0.2", "sum to 1"), ("0.5", "1 values for 2"),
                                         ("1.2,-0.2", "> 0"), ("a,b", "numbers")])
def test_weights_not_summing_to_one_are_refused(weights, msg):
    with pytest.raises(ConfigError, match=f"--weights.*{msg}"):
        MergeConfig(labels=("a", "b"), weights=weights, out="m").validate()


def test_cli_refuses_bad_weights_before_reading_anything():
    result = CliRunner().invoke(main, ["merge-labels", "--labels", "a", "--labels", "b",
                                       "--weights", "0.6,0.6", "--out", "m"])
    assert result.exit_code == 2 and "--weights must sum to 1" in result.output


def write_output(out, teacher, rows_ids, rows_p, sampled, tokens=(7, 2, 5), fingerprint="f" * 64,
                 sample_ids=("doc/w0",)):
    """A complete output of one-shard, hand-written samples (same labels for each id)."""
    attrs = ShardAttrs(teacher, fingerprint, V, K, {"mode": "score"})
    samples = []
    for sid in sample_ids:
        prompt_id, index = sid.rsplit("/", 1)
        samples.append(Sample(prompt_id, int(index[1:]), [tokens[0]], list(tokens[1:]),
                              np.array(rows_ids), np.log(np.array(rows_p, np.float32)),
                              np.log(np.array(sampled, np.float32)), "scored", id_prefix="w"))
    out.mkdir(parents=True)
    record = write_shard(out / "shard-00000.h5", 0, samples, attrs)
    outcome = filter_samples(samples, KEEP_ALL)
    record.index_sha256 = write_index_part(out, 0, index_table(samples, outcome.metrics,
                                                               outcome.reasons, record.name))
    record.generated = len(samples)
    n = len(samples)
    m = Manifest(teacher=teacher, tokenizer_fingerprint=fingerprint, vocab_size=V, top_k=K,
                 mode="score", complete=True, input_records=n, accepted_prompts=n,
                 planned_samples=n, shards={0: record})
    merge_index(out, [0])
    write_manifest(out, m)
    return out


@pytest.fixture
def two_teachers(tmp_path):
    return (write_output(tmp_path / "A", "teacher-a", A_IDS, A_P, A_SAMPLED),
            write_output(tmp_path / "B", "teacher-b", B_IDS, B_P, B_SAMPLED))


@pytest.mark.parametrize("rule", ["mean", "geometric"])
def test_merged_output_holds_the_mixture_records_its_sources_and_verifies(two_teachers, tmp_path,
                                                                         rule):
    a, b = two_teachers
    out = tmp_path / "M"
    result = CliRunner().invoke(main, ["merge-labels", "--labels", str(a), "--labels", str(b),
                                       "--weights", "0.7,0.3", "--mix-rule", rule,
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    s = ShardReader(out / "shard-00000.h5").sample(0)
    assert s["token_ids"].tolist() == [7, 2, 5] and s["positions"].tolist() == [1, 2]
    if rule == "mean":
        want_p, want_s = MEAN_P, MEAN_SAMPLED
    else:
        want_p = [[G0[2] / Z0, G0[1] / Z0], [G1[5] / Z1, G1[4] / Z1]]
        want_s = [geo(0.3, 0.6) / Z0, geo(0.35, 0.3) / Z1]
    assert s["topk_ids"].tolist() == [[2, 1], [5, 4]]
    np.testing.assert_allclose(np.exp(s["topk_logprobs"].astype(np.float64)), want_p, rtol=2e-3)
    np.testing.assert_allclose(np.exp(s["sampled_logprobs"].astype(np.float64)), want_s, rtol=2e-3)  # Z from float16 rows
    m = read_manifest(out)
    assert m.mode == "merged" and m.complete and m.top_k == K
    sources = m.config["sources"]
    assert [(x["labels"], x["teacher"], x["weight"]) for x in sources] == \
        [(str(a), "teacher-a", 0.7), (str(b), "teacher-b", 0.3)]
    import hashlib
    assert sources[1]["manifest_sha256"] == hashlib.sha256(
        (b / "manifest.json").read_bytes()).hexdigest()
    verified = CliRunner().invoke(main, ["verify", str(out)])
    assert verified.exit_code == 0 and "OK: 1 output(s) verified" in verified.output, \
        verified.output


def merge(a, b, out):
    return run_merge(MergeConfig(labels=(str(a), str(b)), weights="0.5,0.5", out=str(out)))


def test_a_different_token_is_refused_naming_sample_and_position(tmp_path, two_teachers):
    a, _ = two_teachers
    b = write_output(tmp_path / "B2", "teacher-b", B_IDS, B_P, B_SAMPLED, tokens=(7, 2, 6))
    with pytest.raises(MisalignedOutputs, match=r"sample 'doc/w0': token 2 is 6 in .*B2 but 5 "):
        merge(a, b, tmp_path / "M")
    assert not (tmp_path / "M").exists()


def test_a_missing_sample_is_refused_naming_it(tmp_path, two_teachers):
    a, _ = two_teachers
    b = write_output(tmp_path / "B2", "teacher-b", B_IDS, B_P, B_SAMPLED,
                     sample_ids=("doc/w0", "doc/w1"))
    with pytest.raises(MisalignedOutputs, match=r"B2: has sample 'doc/w1', which .*A does not"):
        merge(a, b, tmp_path / "M")
    with pytest.raises(MisalignedOutputs, match=r"A: has no sample 'doc/w1'"):
        merge(b, a, tmp_path / "M")


def test_another_tokenizer_is_refused_through_the_cli(tmp_path, two_teachers):
    a, _ = two_teachers
    b = write_output(tmp_path / "B2", "teacher-b", B_IDS, B_P, B_SAMPLED, fingerprint="e" * 64)
    result = CliRunner().invoke(main, ["merge-labels", "--labels", str(a), "--labels", str(b),
                                       "--weights", "0.5,0.5", "--out", str(tmp_path / "M")])
    assert result.exit_code == 1 and "tokenizer_fingerprint is 'eeee" in result.output


def test_every_merge_field_has_a_docstring_and_exactly_one_option():
    import dataclasses

    from schemas.config_base import field_docs
    from stages.cli.main import merge_labels

    fields = [f.name for f in dataclasses.fields(MergeConfig)]
    assert set(field_docs(MergeConfig)) == set(fields)
    assert sorted(p.name for p in merge_labels.params) == sorted(fields)


def synthetic_pair(tmp_path, shards=5, per_shard=3):
    """Two teachers' outputs of the same random samples (labels from two seeds), several shards."""
    from bench.synthetic_output import write_random_output

    attrs = ShardAttrs("fake-teacher", "f" * 64, 1000, 4, {"mode": "score"})
    dirs = [tmp_path / "A", tmp_path / "B"]
    for out, label_seed in zip(dirs, (None, 1)):
        write_random_output(out, attrs, shards, per_shard, seed=0, scored=True,
                            label_seed=label_seed)
    return dirs


def test_a_merge_of_several_shards_is_each_samples_mixture(tmp_path):
    a, b = synthetic_pair(tmp_path)
    merge(a, b, tmp_path / "M")
    m = read_manifest(tmp_path / "M")
    assert len(m.shards) == 5 and m.totals()["samples"] == 15
    for i in sorted(m.shards):
        name = m.shards[i].name
        ra, rb, rm = (ShardReader(d / name) for d in (a, b, tmp_path / "M"))
        assert ra.strings("samples/ids") == rm.strings("samples/ids")
        for row in range(len(rm)):
            sa, sb, sm = ra.sample(row), rb.sample(row), rm.sample(row)
            assert not np.array_equal(sa["topk_ids"], sb["topk_ids"])  # really two teachers
            ids, lps = mix_labels([sa["topk_ids"], sb["topk_ids"]],
                                  [np.asarray(sa["topk_logprobs"], np.float32),
                                   np.asarray(sb["topk_logprobs"], np.float32)],
                                  (0.5, 0.5), 1000, 4)
            assert sm["topk_ids"].tolist() == ids.tolist()
            np.testing.assert_allclose(sm["topk_logprobs"], lps, rtol=1e-3, atol=1e-3)


def test_a_locator_maps_two_shards_at_most_and_needs_no_index_for_outputs_sharded_alike(tmp_path):
    from pipeline.store.output_alignment import SampleLocator

    a, b = synthetic_pair(tmp_path)
    ref, other = (SampleLocator(d, read_manifest(d)) for d in (a, b))
    for shard in range(5):
        for row, sid in enumerate(ref.ids(shard)):
            got = other.sample_like(sid, shard, row)
            want = ShardReader(other.paths[shard]).sample(row)
            assert got["topk_ids"].tolist() == want["topk_ids"].tolist()
            assert len(other._open) <= SampleLocator.OPEN_SHARDS
    assert other._rows is None  # read position by position, no id index built


def test_a_locator_finds_a_sample_held_elsewhere_through_its_index(tmp_path):
    from pipeline.store.output_alignment import SampleLocator

    a, _ = synthetic_pair(tmp_path)
    loc = SampleLocator(a, read_manifest(a))
    sid = loc.ids(3)[2]
    got = loc.sample_like(sid, 0, 0)  # as if another output held it first
    assert got["token_ids"].tolist() == ShardReader(loc.paths[3]).sample(2)["token_ids"].tolist()
    assert loc.rows[sid] == (3, 2)
