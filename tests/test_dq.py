"""Data quality: PSI against hand and brute-force values, adversarial AUC, checks, evaluate()."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from mldropd.dq.adversarial import adversarial_auc
from mldropd.dq.checks import KS_EXACT_MAX, basic_checks, ks, ks_sorted
from mldropd.dq.evaluate import FIRST_DATE, DQReport, Thresholds, evaluate, json_safe
from mldropd.dq.psi import psi, psi_with_edges
from tests.support.frames import features_frame

FLOOR = 1e-4


# --- an independent PSI: pure-Python loops, edges by numpy's linear method re-done by hand -------


def brute_quantile(values: list[float], p: float) -> float:
    """Quantile by numpy's default linear method, replicated step by step in plain floats.

    The float steps matter: numpy interpolates from the upper neighbour when the weight is
    >= 0.5, so e.g. the 0.8 quantile of [-4, 1] is 2.2e-16, not 0, and a current value of
    exactly 0 falls below that edge. Exact arithmetic would bin it differently.
    """
    xs = sorted(values)
    h = (len(xs) - 1) * p
    if h >= len(xs) - 1:
        return xs[-1]
    lo = math.floor(h)
    t = h - lo
    a, b = xs[lo], xs[lo + 1]
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t


def brute_psi(reference: list[float], current: list[float], bins: int = 10) -> tuple[float, int]:
    """PSI by the written definition, with loops; returns (psi, bins used)."""
    ref = [v for v in reference if not math.isnan(v)]
    cur = [v for v in current if not math.isnan(v)]
    edges = sorted({brute_quantile(ref, i / bins) for i in range(1, bins)})
    n_bins = len(edges) + 1

    def shares(values: list[float]) -> list[float]:
        counts = [0] * n_bins
        for v in values:
            k = 0
            while k < len(edges) and v >= edges[k]:  # left-closed: v == edge goes up
                k += 1
            counts[k] += 1
        return [max(c / len(values), FLOOR) for c in counts]

    total = 0.0
    for r, c in zip(shares(ref), shares(cur), strict=True):
        total += (c - r) * math.log(c / r)
    return total, n_bins


# --- PSI: hand-made cases ------------------------------------------------------------------------


def test_identical_distributions_give_zero() -> None:
    x = np.arange(100.0)
    result = psi(x, x.copy())
    assert result.psi == 0.0
    assert result.ref_shares == pytest.approx([0.1] * 10)
    assert result.noise == pytest.approx(9 * (1 / 100 + 1 / 100))
    assert result.within_noise


def test_known_shift_matches_hand_value() -> None:
    # Reference 0..9: deciles 0.9, 1.8, ..., 8.1, one value per bin (shares 0.1).
    # Current: half in the first bin, half in the last, 8 empty bins clipped to 1e-4.
    expected = 2 * (0.5 - 0.1) * math.log(0.5 / 0.1) + 8 * (FLOOR - 0.1) * math.log(FLOOR / 0.1)
    result = psi(np.arange(10.0), [0.0] * 5 + [9.0] * 5)
    assert result.psi == pytest.approx(expected, rel=1e-12)
    assert result.edges == pytest.approx([0.9, 1.8, 2.7, 3.6, 4.5, 5.4, 6.3, 7.2, 8.1])
    assert result.cur_shares == pytest.approx([0.5] + [FLOOR] * 8 + [0.5])
    assert result.noise == pytest.approx(9 * (1 / 10 + 1 / 10))
    assert not result.within_noise  # 2.7 > 1.8


def test_shift_matches_brute_force() -> None:
    rng = np.random.default_rng(7)
    ref = rng.normal(size=2_000)
    cur = rng.normal(0.3, 1.2, size=1_500)
    expected, n_bins = brute_psi(ref.tolist(), cur.tolist())
    result = psi(ref, cur)
    assert n_bins == 10
    assert result.psi == pytest.approx(expected, rel=1e-9)
    assert result.psi > 0.1


def test_ties_merge_duplicate_deciles() -> None:
    # 50 zeros then 1..50: deciles 0, 0, 0, 0, 0.5, 10.4, 20.3, 30.2, 40.1 -> 6 edges, 7 bins.
    ref = [0.0] * 50 + [float(v) for v in range(1, 51)]
    result = psi(ref, ref)
    assert result.edges == pytest.approx([0.0, 0.5, 10.4, 20.3, 30.2, 40.1])
    assert result.ref_shares == pytest.approx([FLOOR, 0.5, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert result.note.startswith("reference has ties: 3 duplicate deciles merged, 7 bins used")
    assert result.noise == pytest.approx(6 * (1 / 100 + 1 / 100))  # bins actually used
    assert result.psi == 0.0
    shifted = [1.0] * 50 + [float(v) for v in range(1, 51)]
    assert psi(ref, shifted).psi == pytest.approx(brute_psi(ref, shifted)[0], rel=1e-12)


def test_out_of_range_values_fall_in_outer_bins_and_bins_are_left_closed() -> None:
    ref = np.arange(11.0)  # deciles exactly 1, 2, ..., 9
    result = psi(ref, [-1e9, -5.0, 100.0, np.inf])
    assert result.cur_shares == pytest.approx([0.5] + [FLOOR] * 8 + [0.5])
    on_edges = psi(ref, [3.0, 9.0])  # a value equal to an edge belongs to the bin it starts
    assert on_edges.cur_shares == pytest.approx([FLOOR] * 3 + [0.5] + [FLOOR] * 5 + [0.5])


def test_nan_is_excluded_from_both_sides() -> None:
    ref = np.arange(10.0)
    cur = np.array([0.0] * 5 + [9.0] * 5)
    with_nan = psi(np.append(ref, [np.nan] * 7), [None, *cur.tolist(), float("nan")])
    plain = psi(ref, cur)
    assert with_nan.psi == plain.psi
    assert (with_nan.n_ref, with_nan.n_cur) == (10, 10)
    assert with_nan.edges == plain.edges


def test_constant_reference_uses_two_bins() -> None:
    result = psi([3.0] * 50, [2.0] * 10 + [3.0] * 40 + [4.0] * 50)
    assert result.edges == [3.0]
    assert result.ref_shares == pytest.approx([FLOOR, 1.0])
    assert result.cur_shares == pytest.approx([0.1, 0.9])
    expected = (0.1 - FLOOR) * math.log(0.1 / FLOOR) + (0.9 - 1.0) * math.log(0.9)
    assert result.psi == pytest.approx(expected, rel=1e-12)
    assert result.noise == pytest.approx(1 * (1 / 50 + 1 / 100))
    assert "reference is constant" in result.note and "2 bins used" in result.note


@pytest.mark.parametrize(
    ("reference", "current", "words"),
    [
        ([], [1.0, 2.0], "reference side is empty"),
        ([np.nan, np.nan], [1.0], "reference side is empty"),
        ([1.0, 2.0, 3.0], [np.nan], "current side is empty"),
        ([], [], "both sides are empty"),
    ],
)
def test_empty_side_gives_no_psi(reference: list[float], current: list[float], words: str) -> None:
    result = psi(reference, current)
    assert result.psi is None and result.noise is None and not result.within_noise
    assert words in result.note
    assert result.cur_shares == []


def test_within_noise_on_a_small_sample() -> None:
    ref = np.arange(20.0) / 20
    result = psi(ref, ref + 0.1)
    assert result.psi is not None and result.noise is not None
    assert 0.25 <= result.psi <= result.noise == pytest.approx(0.9)
    assert result.within_noise
    assert "within sampling noise" in result.note


# --- PSI: properties -----------------------------------------------------------------------------

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
samples = st.lists(finite, min_size=1, max_size=60)
small_ints = st.lists(st.integers(-5, 5).map(float), min_size=1, max_size=60)


@settings(max_examples=150, deadline=None)
@given(samples, samples)
def test_psi_is_non_negative(ref: list[float], cur: list[float]) -> None:
    result = psi(ref, cur)
    assert result.psi is not None and result.psi >= 0.0


@settings(max_examples=150, deadline=None)
@given(samples)
def test_psi_of_identical_samples_is_zero(x: list[float]) -> None:
    assert psi(x, list(reversed(x))).psi == 0.0


@settings(max_examples=150, deadline=None)
@given(samples, samples, st.lists(finite, min_size=0, max_size=12))
def test_psi_with_fixed_edges_is_symmetric(a: list[float], b: list[float], e: list[float]) -> None:
    edges = sorted(set(e))
    assert psi_with_edges(a, b, edges) == pytest.approx(psi_with_edges(b, a, edges), abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(small_ints, small_ints, st.integers(2, 12))
def test_psi_matches_brute_force_with_ties(ref: list[float], cur: list[float], bins: int) -> None:
    result = psi(ref, cur, bins=bins)
    expected, n_bins = brute_psi(ref, cur, bins)
    assert len(result.ref_shares) == n_bins
    assert result.psi == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert result.noise == pytest.approx((n_bins - 1) * (1 / len(ref) + 1 / len(cur)))


# --- adversarial validation ----------------------------------------------------------------------


def test_adversarial_auc_is_half_on_one_distribution() -> None:
    rng = np.random.default_rng(11)
    result = adversarial_auc(features_frame(rng, 5_000), features_frame(rng, 5_000))
    assert result.auc is not None and abs(result.auc - 0.5) < 0.03
    assert (result.n_ref, result.n_cur) == (5_000, 5_000)


def test_adversarial_auc_finds_a_strong_shift_and_its_feature() -> None:
    rng = np.random.default_rng(12)
    result = adversarial_auc(features_frame(rng, 2_000, shift=3.0), features_frame(rng, 2_000))
    assert result.auc is not None and result.auc > 0.9
    assert result.top_features[0][0] == "f1"
    assert 1 <= len(result.top_features) <= 5
    imps = [imp for _, imp in result.top_features]
    assert imps == sorted(imps, reverse=True)


def test_adversarial_auc_is_deterministic_and_samples() -> None:
    rng = np.random.default_rng(13)
    ref, cur = features_frame(rng, 1_500, shift=0.5), features_frame(rng, 1_200)
    first = adversarial_auc(ref, cur, max_rows=1_000, seed=3)
    again = adversarial_auc(ref, cur, max_rows=1_000, seed=3)
    other = adversarial_auc(ref, cur, max_rows=1_000, seed=4)
    assert first == again
    assert first.auc != other.auc
    assert (first.n_ref, first.n_cur) == (1_000, 1_000)
    assert "sampled to at most 1,000 rows" in first.note


def test_adversarial_auc_needs_rows_on_both_sides() -> None:
    rng = np.random.default_rng(14)
    result = adversarial_auc(features_frame(rng, 100), features_frame(rng, 9))
    assert result.auc is None and result.top_features == []
    assert "fewer than 10 rows" in result.note


# --- basic checks and KS -------------------------------------------------------------------------


def messages(checks: dict, severity: str) -> list[str]:
    """Messages of the problems of one severity."""
    return [p["message"] for p in checks["problems"] if p["severity"] == severity]


def test_clean_scores_have_no_problems() -> None:
    cur = np.linspace(0, 1, 100)
    checks = basic_checks(cur, np.linspace(0, 1, 90), is_probability=True, slice_rows=100)
    assert checks["problems"] == []
    assert checks["rows"] == 100 and checks["reference_rows"] == 90
    assert checks["row_change"] == pytest.approx(10 / 90)
    assert checks["scored_share"] == 1.0
    assert checks["null_share"] == 0.0 and checks["out_of_range_share"] == 0.0
    assert (checks["min"], checks["max"]) == (0.0, 1.0)
    assert checks["mean"] == pytest.approx(0.5) and checks["std"] == pytest.approx(np.std(cur))
    assert not checks["constant"]
    json.dumps(checks, allow_nan=False)


def test_null_scores_warn_then_alert() -> None:
    few = basic_checks([0.5, 0.6, 0.7] * 33 + [None], None, is_probability=True, slice_rows=None)
    assert few["null_share"] == pytest.approx(0.01)
    assert messages(few, "warn") == ["1.0% of scores are null/NaN"]
    many = basic_checks([0.5, 0.2] * 45 + [np.nan] * 10, None, is_probability=True, slice_rows=None)
    assert messages(many, "alert") == ["10.0% of scores are null/NaN"]
    assert many["mean"] == pytest.approx(0.35)  # statistics ignore nulls


def test_out_of_range_scores_alert_only_for_probabilities() -> None:
    scores = [0.5, 0.1] * 44 + [1.5] * 6 + [-0.2] * 6
    checks = basic_checks(scores, None, is_probability=True, slice_rows=None)
    assert messages(checks, "alert") == ["12.0% of scores are outside [0, 1]"]
    raw = basic_checks(scores, None, is_probability=False, slice_rows=None)
    assert raw["out_of_range_share"] is None and raw["problems"] == []


def test_constant_scores_warn() -> None:
    checks = basic_checks([0.3] * 20, None, is_probability=True, slice_rows=None)
    assert checks["constant"] and checks["std"] == 0.0
    assert messages(checks, "warn") == ["all scores are the same value (0.3)"]
    assert not basic_checks([0.3], None, is_probability=True, slice_rows=None)["constant"]


@pytest.mark.parametrize(
    ("rows", "severity", "words"),
    [(110, None, ""), (130, "warn", "30.0% more rows"), (40, "alert", "60.0% fewer rows")],
)
def test_row_change_against_reference(rows: int, severity: str | None, words: str) -> None:
    checks = basic_checks(
        np.linspace(0, 1, rows), np.linspace(0, 1, 100), is_probability=True, slice_rows=None
    )
    assert checks["row_change"] == pytest.approx((rows - 100) / 100)
    if severity is None:
        assert checks["problems"] == []
    else:
        assert [p["severity"] for p in checks["problems"]] == [severity]
        assert checks["problems"][0]["message"].startswith(words)


def test_scored_share_below_99_percent_warns() -> None:
    checks = basic_checks(np.linspace(0, 1, 95), None, is_probability=True, slice_rows=100)
    assert checks["scored_share"] == pytest.approx(0.95) and checks["row_change"] is None
    assert messages(checks, "warn") == ["only 95.0% of the slice's 100 entities were scored"]
    ok = basic_checks(np.linspace(0, 1, 99), None, is_probability=True, slice_rows=100)
    assert ok["problems"] == []


def test_empty_scores_alert_and_have_no_statistics() -> None:
    checks = basic_checks([], [0.5], is_probability=True, slice_rows=None)
    assert messages(checks, "alert")[0] == "no scores were written"
    assert checks["min"] is None and checks["std"] is None and checks["null_share"] is None


def test_ks_matches_scipy_on_non_nan_scores() -> None:
    rng = np.random.default_rng(3)
    ref, cur = rng.normal(size=300), rng.normal(0.2, size=200)
    expected = stats.ks_2samp(ref, cur)
    stat, pvalue = ks(np.append(ref, np.nan), np.append(cur, [np.nan, np.nan]))
    assert stat == pytest.approx(expected.statistic) and pvalue == pytest.approx(expected.pvalue)
    assert ks([], cur) == (None, None)


@pytest.mark.parametrize(
    ("n_ref", "n_cur", "shift", "decimals"),
    [
        (30_000, 20_000, 0.02, None),
        (12_000, 50_000, 0.0, 2),  # many ties
        (40_000, 40_000, 0.02, 3),
        (10_001, 10_001, 0.05, None),  # just above ks_2samp's exact limit
        (200_000, 150_000, 0.01, None),
    ],
)
def test_ks_from_sorted_scores_is_scipys_statistic_to_the_bit(
    n_ref: int, n_cur: int, shift: float, decimals: int | None
) -> None:
    rng = np.random.default_rng(4)
    ref, cur = rng.normal(size=n_ref), rng.normal(shift, size=n_cur)
    if decimals is not None:
        ref, cur = np.round(ref, decimals), np.round(cur, decimals)
    ref[:3], cur[:2] = np.inf, -np.inf
    expected = stats.ks_2samp(ref, cur)
    stat, pvalue = ks_sorted(np.sort(ref), np.sort(cur))
    assert stat == expected.statistic  # exactly, not approximately
    # The p-value: the limiting distribution instead of ks_2samp's finite-n formula.
    assert expected.pvalue >= 0.001 and pvalue == pytest.approx(expected.pvalue, rel=0.02)


def test_ks_from_sorted_scores_on_small_sides_is_scipys() -> None:
    rng = np.random.default_rng(5)
    ref, cur = np.sort(rng.normal(size=KS_EXACT_MAX)), np.sort(rng.normal(0.1, size=900))
    expected = stats.ks_2samp(ref, cur)
    assert ks_sorted(ref, cur) == (expected.statistic, expected.pvalue)
    assert ks_sorted(ref, cur[:0]) == (None, None)


# --- thresholds and evaluate() -------------------------------------------------------------------


def test_thresholds_merge_overrides_and_ignore_unknown_keys() -> None:
    merged = Thresholds.merged(
        Thresholds(), {"psi_warn": 0.2, "auc_alert": 0.9, "gate": "alert", "auc_warn": None}
    )
    assert merged == Thresholds(psi_warn=0.2, psi_alert=0.25, auc_warn=0.6, auc_alert=0.9)
    assert Thresholds.merged(merged, None) is merged
    with pytest.raises(ValueError, match="psi_warn"):
        Thresholds.merged(Thresholds(), {"psi_warn": "high"})
    with pytest.raises(ValueError, match="above"):
        Thresholds.merged(Thresholds(), {"auc_warn": 0.8})


def run(
    current: pd.DataFrame,
    reference: pd.DataFrame | None,
    thresholds: Thresholds | None = None,
    **kwargs: object,
) -> DQReport:
    """Evaluate with the test frames' feature list and probability scores."""
    thresholds = thresholds or Thresholds()
    return evaluate(
        current,
        reference,
        features=["f0", "f1", "f2", "f3", "f4", "colour"],
        thresholds=thresholds,
        is_probability=True,
        **kwargs,
    )


def test_first_scored_date_uses_checks_only() -> None:
    rng = np.random.default_rng(20)
    report = run(features_frame(rng, 200), None, slice_rows=200)
    assert report.status == "ok"
    assert report.reason == FIRST_DATE
    assert (report.psi, report.psi_noise, report.auc, report.ks) == (None, None, None, None)
    bad = features_frame(rng, 200)
    bad.loc[:29, "score"] = 1.5
    report = run(bad, None)
    assert report.status == "alert"
    assert report.reason == FIRST_DATE + "; checks: 15.0% of scores are outside [0, 1]"
    json.dumps(report.details, allow_nan=False)


def test_evaluate_ok_without_drift() -> None:
    rng = np.random.default_rng(21)
    cur, ref = features_frame(rng, 3_000), features_frame(rng, 3_000)
    report = run(cur, ref, slice_rows=3_000)
    assert report.status == "ok"
    assert report.psi is not None and report.auc is not None and report.ks is not None
    assert report.reason == f"PSI {report.psi:.2f} < warn 0.10; AUC {report.auc:.2f} < warn 0.60"
    assert report.psi == psi(ref["score"], cur["score"]).psi
    assert (
        report.details["psi"]["edges"]
        == np.quantile(ref["score"], [i / 10 for i in range(1, 10)]).tolist()
    )
    assert report.ks == stats.ks_2samp(ref["score"], cur["score"]).statistic
    hist = report.details["histogram"]
    assert len(hist["edges"]) == 21 and sum(hist["current"]) == 3_000
    assert hist["edges"][0] == cur["score"].min() and hist["edges"][-1] == cur["score"].max()
    assert sum(hist["reference"]) + hist["reference_below"] + hist["reference_above"] == 3_000
    json.dumps(report.details, allow_nan=False)


def test_evaluate_methods_share_psi_and_ks_and_rank_features_only_from_warn() -> None:
    rng = np.random.default_rng(21)
    cur, ref = features_frame(rng, 3_000), features_frame(rng, 3_000)
    fast, slow = run(cur, ref), run(cur, ref, method="kfold5")
    assert (fast.psi, fast.ks) == (slow.psi, slow.ks)
    assert fast.details["psi"] == slow.details["psi"]
    # Below the warn threshold the report names no features: none are ranked (it was noise).
    assert fast.auc is not None and fast.auc < 0.6
    assert fast.details["av"]["top_features"] == []
    assert "not computed, AUC below 0.6" in fast.details["av"]["note"]
    assert slow.details["av"]["top_features"] != []  # the original ranks them always
    with pytest.raises(ValueError, match="holdout"):
        run(cur, ref, method="tenfold")


def test_evaluate_uses_full_score_arrays_when_given() -> None:
    # The pipeline passes every score of both partitions and samples of (features, score).
    rng = np.random.default_rng(24)
    cur, ref = features_frame(rng, 4_000), features_frame(rng, 4_000)
    report = run(
        cur.iloc[:500],
        ref.iloc[:500],
        current_scores=cur["score"].to_numpy(),
        reference_scores=ref["score"].to_numpy(),
    )
    assert report.details["checks"]["rows"] == 4_000
    assert report.details["checks"]["reference_rows"] == 4_000
    assert report.psi == psi(ref["score"], cur["score"]).psi
    assert report.details["psi"]["n_cur"] == 4_000
    assert (report.details["av"]["n_ref"], report.details["av"]["n_cur"]) == (500, 500)
    assert sum(report.details["histogram"]["current"]) == 4_000


def test_evaluate_alerts_on_a_strong_shift_and_names_the_feature() -> None:
    rng = np.random.default_rng(22)
    report = run(features_frame(rng, 2_000, shift=3.0), features_frame(rng, 2_000))
    assert report.status == "alert"
    assert report.psi is not None and report.auc is not None
    assert report.reason.startswith(
        f"PSI {report.psi:.2f} ≥ alert 0.25; AUC {report.auc:.2f} ≥ "
        "alert 0.75; top moved features: f1"
    )
    assert report.details["av"]["top_features"][0][0] == "f1"
    assert report.details["thresholds"] == {
        "psi_warn": 0.1,
        "psi_alert": 0.25,
        "auc_warn": 0.6,
        "auc_alert": 0.75,
    }


def test_evaluate_with_overridden_thresholds() -> None:
    rng = np.random.default_rng(22)
    cur, ref = features_frame(rng, 2_000, shift=3.0), features_frame(rng, 2_000)
    loose = Thresholds.merged(Thresholds(), {"psi_alert": 5.0, "auc_warn": 0.99, "auc_alert": 1.0})
    report = run(cur, ref, loose)
    assert report.status == "warn"
    assert f"PSI {report.psi:.2f} ≥ warn 0.10" in report.reason
    assert f"AUC {report.auc:.2f} < warn 0.99" in report.reason
    assert "top moved features" not in report.reason
    assert report.details["thresholds"]["psi_alert"] == 5.0


def test_psi_within_noise_cannot_raise_the_status() -> None:
    ref = pd.DataFrame({"score": np.arange(20.0) / 20})
    cur = pd.DataFrame({"score": np.arange(20.0) / 20 + 0.1})
    report = evaluate(cur, ref, features=[], thresholds=Thresholds(), is_probability=False)
    assert report.psi is not None and report.psi_noise is not None
    assert 0.25 <= report.psi <= report.psi_noise
    assert report.details["psi"]["status"] == "ok" and report.details["psi"]["within_noise"]
    assert report.reason.startswith(
        f"PSI {report.psi:.2f} ≥ alert 0.25, but within sampling "
        "noise 0.90 (n_ref=20, n_cur=20): counted as ok; AUC "
    )
    assert report.status == "ok"
    bigger = evaluate(
        pd.concat([cur] * 10),
        pd.concat([ref] * 10),
        features=[],
        thresholds=Thresholds(),
        is_probability=False,
    )
    assert bigger.psi == pytest.approx(report.psi)  # same shares, 10x the rows: now it counts
    assert bigger.details["psi"]["status"] == "alert" and bigger.status == "alert"


def test_evaluate_with_an_empty_current_partition() -> None:
    rng = np.random.default_rng(25)
    ref = features_frame(rng, 50)
    report = run(ref.iloc[:0], ref)
    assert report.status == "alert"
    assert (report.psi, report.auc, report.ks) == (None, None, None)
    assert report.reason == (
        "PSI not computed: the current side is empty (after dropping NaN scores); "
        "adversarial validation: fewer than 10 rows on a side (50 reference, 0 current): "
        "AUC not computed; checks: no scores were written; 100.0% fewer rows than the "
        "reference (0 vs 50)"
    )
    assert report.details["histogram"] is None
    json.dumps(report.details, allow_nan=False)


def test_evaluate_details_are_strict_json_with_inf_and_nan_scores() -> None:
    rng = np.random.default_rng(23)
    ref = features_frame(rng, 300)
    cur = features_frame(rng, 300)
    cur.loc[:9, "score"] = np.nan
    cur.loc[10:12, "score"] = np.inf
    report = run(cur, ref)
    text = json.dumps(report.details, allow_nan=False)
    assert report.status == "alert"  # 1% out of range (inf) is an alert; 3.3% null is a warn
    assert "1.0% of scores are outside [0, 1]" in report.reason
    assert json.loads(text)["checks"]["max"] <= 1.0
    assert "3 infinite values treated as missing" in report.details["av"]["note"]
    assert json_safe([np.float64(np.inf), -np.inf, np.nan, np.int64(3), np.bool_(True)]) == [
        "inf",
        "-inf",
        None,
        3,
        True,
    ]
