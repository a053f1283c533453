"""The demo's stories, written into its feature data: 30 days of customer features in which

- churn_lgbm's inputs start to swing from one day to the next on day SWING_FROM, a little more
  each day, so its DQ goes ok -> warn -> alert by itself (PSI and adversarial AUC vs the
  previous day);
- fraud_rules' inputs shift for a few days from FRAUD_SHIFT_FROM (a DQ warning), after which
  its owner pauses it;
- upsell_logreg is stable, but the newest slice arrives with basket_size renamed (the broken
  export fails its run; the repaired slice lets the retry succeed).

Day index 0 is the oldest date, DAYS - 1 today. Everything is seeded: the same home every time.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DAYS = 30
DRIFTING, RETRIED, PAUSED = "churn_lgbm", "upsell_logreg", "fraud_rules"
SWING_FROM = 15  # churn_lgbm's inputs begin to swing
FRAUD_SHIFT_FROM = 18  # fraud_rules' inputs begin to shift
PAUSE_AFTER = 20  # fraud_rules is paused after this day is scored
BROKEN_DAY = DAYS - 1  # the export that renamed a column: today's slice
BROKEN_COLUMN, BROKEN_NAME = "basket_size", "basket_size_eur"

# How much churn_lgbm's swinging inputs differ from the day before (log scale), by day index:
# a steady climb through the warn band, then a jump past the alert threshold.
SWINGS = {15: 0.1, 16: 0.17, 17: 0.24, 18: 0.26, 19: 0.27, 20: 0.28, 21: 0.29}
SWING_ALERT, SWING_STEP = 0.36, 0.03  # day ALERT_FROM and each day after it
ALERT_FROM = 22
NIGHT_ORDERS = {18: 6.0, 19: 3.5, 20: 1.9}  # beta(1.2, b) of night_order_share: more at night

CHURN_FEATURES = [
    "tenure_months",
    "monthly_spend",
    "support_calls",
    "days_since_login",
    "sessions_per_week",
    "discount_pct",
]
UPSELL_FEATURES = ["tenure_months", "monthly_spend", "basket_size", "pages_per_visit"]
FRAUD_FEATURES = ["payment_failures", "card_country_mismatch", "night_order_share"]


def day_to_day_swing(day_index: int) -> float:
    """How far churn_lgbm's swinging inputs move from the day before (log scale)."""
    if day_index < SWING_FROM:
        return 0.0
    if day_index < ALERT_FROM:
        return SWINGS[day_index]
    return SWING_ALERT + SWING_STEP * (day_index - ALERT_FROM)


def swing(day_index: int) -> float:
    """Log-scale offset of days_since_login (sessions_per_week: the opposite) on a day.

    The sign alternates, so the values stay in a sensible range while each day still differs
    from the day before by day_to_day_swing: PSI and AUC against the previous day follow it.
    """
    size = 0.0
    for i in range(SWING_FROM, day_index + 1):
        size = day_to_day_swing(i) - size
    return (-1) ** day_index * size


def customers(n: int, day_index: int, day: dt.date, seed: int = 17) -> dict[str, np.ndarray]:
    """One day of the customer table: attributes fixed per customer, behaviour drawn daily."""
    fixed = np.random.default_rng(seed)
    tenure = fixed.gamma(2.0, 14.0, n).round(0)
    spend = fixed.lognormal(3.6, 0.45, n).round(2)
    discount = fixed.choice([0.0, 5.0, 10.0, 20.0], n, p=[0.55, 0.2, 0.15, 0.1])
    rng = np.random.default_rng([seed, day_index])
    weekend = 1.08 if day.weekday() >= 5 else 1.0  # a gentle weekly rhythm
    offset = swing(day_index)
    night = NIGHT_ORDERS.get(day_index, 8.0 if day_index < FRAUD_SHIFT_FROM else 1.9)
    return {
        "entity_id": np.arange(n, dtype=np.int64),
        "tenure_months": tenure,
        "monthly_spend": spend,
        "support_calls": rng.poisson(1.1, n).astype(float),
        "days_since_login": (rng.exponential(5.0, n) * math.exp(offset)).round(1),
        "sessions_per_week": (rng.gamma(3.0, 1.4, n) * math.exp(-offset)).round(1),
        "discount_pct": discount,
        "basket_size": (rng.lognormal(3.2, 0.35, n) * weekend).round(2),
        "pages_per_visit": rng.gamma(4.0, 1.6, n).round(1),
        "payment_failures": rng.poisson(0.25, n).astype(float),
        "card_country_mismatch": (rng.random(n) < 0.05).astype(float),
        "night_order_share": rng.beta(1.2, night, n),
    }


def slice_table(n: int, day_index: int, day: dt.date, *, broken: bool = False) -> pa.Table:
    """The feature slice of a day; `broken`: as the faulty export wrote it (a column renamed)."""
    columns = customers(n, day_index, day)
    if broken:
        columns[BROKEN_NAME] = columns.pop(BROKEN_COLUMN)
    return pa.table(columns)


def write_slice(root: Path, n: int, day_index: int, day: dt.date, *, broken: bool = False) -> None:
    """Write (or replace) the slice of one day under root/dt=YYYY-MM-DD/."""
    folder = root / f"dt={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "part-0.parquet.tmp"
    pq.write_table(slice_table(n, day_index, day, broken=broken), tmp)
    tmp.replace(folder / "part-0.parquet")  # a reader never sees half a file


def story_start(root: Path, today: dt.date) -> dt.date:
    """Day 0 of the stories: the oldest slice already written, else DAYS - 1 days before today."""
    written = sorted(dt.date.fromisoformat(p.name[3:]) for p in root.glob("dt=*") if p.is_dir())
    return written[0] if written else today - dt.timedelta(days=DAYS - 1)


def write_story_features(root: Path, today: dt.date, n: int) -> dt.date:
    """Write every slice from day 0 to today that is missing (the days after the history go on
    with the stories, for the daemon's own sweeps); return day 0."""
    start = story_start(root, today)
    for index in range((today - start).days + 1):
        day = start + dt.timedelta(days=index)
        if not any((root / f"dt={day.isoformat()}").glob("*.parquet")):
            write_slice(root, n, index, day)
    return start


def _training_frame(n: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """Customers of a typical day (before the stories), with churn and upsell labels."""
    import pandas as pd

    frame = pd.DataFrame(customers(n, 0, dt.date(2026, 1, 7), seed=5)).drop(columns="entity_id")
    rng = np.random.default_rng(5)

    def draw(logit: Any) -> np.ndarray:
        return (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)

    churn = draw(
        -1.2
        + 0.16 * frame["days_since_login"]
        - 0.35 * frame["sessions_per_week"]
        + 0.45 * frame["support_calls"]
        - 0.03 * frame["tenure_months"]
        + 0.02 * frame["discount_pct"]
    )
    upsell = draw(
        -2.0
        + 0.9 * np.log(frame["monthly_spend"] / 36)
        + 0.04 * frame["basket_size"]
        + 0.1 * frame["pages_per_visit"]
        - 0.01 * frame["tenure_months"]
    )
    return frame, churn, upsell


def make_story_models(folder: Path, email: str, n_rows: int = 20_000) -> list[Path]:
    """Fit and save the three demo models (LightGBM, a Pipeline with a lambda, a function)."""
    import lightgbm as lgb
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    from mldropd.notebook import save_model

    def fraud_rules(frame: Any) -> Any:
        """A hand-written rule score in [0, 1]: no ML library, just the columns."""
        import numpy as np

        raw = (
            0.35 * np.minimum(frame["payment_failures"], 2)
            + 0.4 * frame["card_country_mismatch"]
            + 0.6 * frame["night_order_share"]
        )
        return np.clip(raw.to_numpy(dtype=float), 0.0, 1.0)

    frame, churn, upsell = _training_frame(n_rows)
    gbm = lgb.LGBMClassifier(n_estimators=80, num_leaves=15, learning_rate=0.08, verbose=-1)
    gbm.fit(frame[CHURN_FEATURES], churn)
    pipeline = Pipeline(
        [
            ("log", FunctionTransformer(lambda a: np.log1p(np.abs(a)))),
            ("scale", StandardScaler()),
            ("model", LogisticRegression(max_iter=500)),
        ]
    )
    pipeline.fit(frame[UPSELL_FEATURES], upsell)
    sample = frame.head(200)
    common = {"email": email, "schedule": "daily", "sample": sample}
    return [
        save_model(
            folder / f"{DRIFTING}.dill",
            pipeline=gbm,
            features=CHURN_FEATURES,
            name=DRIFTING,
            meta={"description": "who is about to leave: LightGBM on usage and support"},
            **common,
        ),
        save_model(
            folder / f"{RETRIED}.dill",
            pipeline=pipeline,
            features=UPSELL_FEATURES,
            name=RETRIED,
            meta={"description": "who buys the bigger plan: a Pipeline with a lambda"},
            **common,
        ),
        save_model(
            folder / f"{PAUSED}.dill",
            pipeline=fraud_rules,
            features=FRAUD_FEATURES,
            name=PAUSED,
            meta={"description": "orders to check by hand: a plain scoring function"},
            **common,
        ),
    ]
