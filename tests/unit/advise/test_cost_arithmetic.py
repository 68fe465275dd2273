"""`lokal cost`'s arithmetic against cases worked out by hand, its edges, and its refusals."""

from __future__ import annotations

import math

import pytest

from lokal.advise.cost import HOURS_PER_MONTH, SECONDS_PER_MONTH, CostInputs, compute_cost
from lokal.advise.prices import ApiPrice, PriceTable

PRICES = PriceTable(
    noted="2025-01-01",
    currency="EUR",
    apis=(
        ApiPrice("big/model", "Big", "Model", input_per_m=1.0, output_per_m=3.0),
        ApiPrice("cheap/model", "Cheap", "Model", input_per_m=0.0, output_per_m=0.05),
        ApiPrice("mid/model", "Mid", "Model", input_per_m=0.0, output_per_m=0.10),
    ),
    sources=("test",),
)

# 100 tok/s half the time, a 1,200 machine kept 2 years, 100 W at 0.25 a kWh, 2 prompt tokens per output token.
CASE = CostInputs(hardware_price=1200, lifetime_years=2, watts=100, kwh_price=0.25, utilisation=0.5, tok_s=100,
                  input_per_output=2)


def test_a_month_is_a_twelfth_of_a_julian_year() -> None:
    assert HOURS_PER_MONTH == 730.5  # 365.25 x 24 / 12
    assert SECONDS_PER_MONTH == 2_629_800


def test_local_cost_matches_the_hand_computed_case() -> None:
    r = compute_cost(CASE, PRICES)
    # tokens a month: 100 tok/s x 0.5 x 2,629,800 s = 131,490,000
    assert r.tokens_per_month == pytest.approx(131_490_000)
    # hardware: 1,200 / (2 years x 12) = 50 a month
    assert r.hardware_per_month == pytest.approx(50.0)
    # energy: 0.1 kW x 730.5 h x 0.5 x 0.25 = 9.13125 a month
    assert r.energy_per_month == pytest.approx(9.13125)
    assert r.local_per_month == pytest.approx(59.13125)
    # per million: 59.13125 / 131.49 = 0.449701...
    assert r.local_per_m == pytest.approx(59.13125 / 131.49)
    assert r.local_per_m == pytest.approx(0.4497014, rel=1e-6)
    # electricity alone: a million tokens take 1e6 / 100 / 3600 = 2.7778 h at 0.1 kW = 0.27778 kWh x 0.25
    assert r.energy_per_m == pytest.approx(0.0694444, rel=1e-5)


def test_cloud_prices_and_break_even_match_the_hand_computed_case() -> None:
    by_id = {c.id: c for c in compute_cost(CASE, PRICES).cloud}
    big = by_id["big/model"]
    # 3.00 per million output + 2 prompt tokens x 1.00 = 5.00 per million output tokens
    assert big.per_m == pytest.approx(5.0)
    # 131.49 M tokens x 5.00 = 657.45 a month
    assert big.month == pytest.approx(657.45)
    # 1,200 / (657.45 - 9.13125 of electricity) = 1.85094 months
    assert big.break_even_months == pytest.approx(1200 / 648.31875)
    assert big.break_even_months == pytest.approx(1.85094, rel=1e-5)
    assert big.pays_back


def test_an_api_cheaper_than_the_electricity_never_breaks_even() -> None:
    cheap = {c.id: c for c in compute_cost(CASE, PRICES).cloud}["cheap/model"]
    # 0.05 x 131.49 = 6.5745 a month, less than 9.13125 of electricity
    assert cheap.month == pytest.approx(6.5745)
    assert cheap.break_even_months is None
    assert not cheap.pays_back


def test_a_break_even_beyond_the_lifetime_does_not_pay_back() -> None:
    mid = {c.id: c for c in compute_cost(CASE, PRICES).cloud}["mid/model"]
    # 0.10 x 131.49 = 13.149 a month; 1,200 / (13.149 - 9.13125) = 298.67 months, past 24
    assert mid.break_even_months == pytest.approx(1200 / (13.149 - 9.13125))
    assert mid.break_even_months == pytest.approx(298.67, rel=1e-4)
    assert not mid.pays_back


def test_the_cloud_is_sorted_cheapest_first() -> None:
    assert [c.id for c in compute_cost(CASE, PRICES).cloud] == ["cheap/model", "mid/model", "big/model"]


def test_a_second_case_full_time_no_prompts() -> None:
    # 20 tok/s all month, 600 over 3 years, 30 W at 0.40, output only (no prompt tokens)
    inputs = CostInputs(hardware_price=600, lifetime_years=3, watts=30, kwh_price=0.40, utilisation=1.0, tok_s=20,
                        input_per_output=0)
    r = compute_cost(inputs, PRICES)
    assert r.tokens_per_month == pytest.approx(52_596_000)  # 20 x 2,629,800
    assert r.hardware_per_month == pytest.approx(600 / 36)  # 16.667
    assert r.energy_per_month == pytest.approx(0.03 * 730.5 * 0.40)  # 8.766
    assert r.local_per_m == pytest.approx((600 / 36 + 8.766) / 52.596)  # 0.48355
    big = {c.id: c for c in r.cloud}["big/model"]
    assert big.per_m == pytest.approx(3.0)  # no prompt tokens: the output price alone
    assert big.break_even_months == pytest.approx(600 / (3.0 * 52.596 - 8.766))  # 4.0236


def test_free_hardware_breaks_even_at_once_and_costs_only_electricity() -> None:
    r = compute_cost(CostInputs(0, 3, 50, 0.3, 0.25, 10), PRICES)
    assert r.hardware_per_month == 0
    assert r.local_per_month == pytest.approx(r.energy_per_month)
    big = {c.id: c for c in r.cloud}["big/model"]
    assert big.break_even_months == 0 and big.pays_back


def test_no_power_and_free_hardware_cost_nothing() -> None:
    r = compute_cost(CostInputs(0, 3, 0, 0.3, 0.25, 10), PRICES)
    assert r.local_per_m == 0 and r.energy_per_m == 0
    assert all(c.break_even_months == 0 for c in r.cloud)


def test_local_cost_per_million_falls_with_utilisation() -> None:
    costs = [compute_cost(CostInputs(1000, 3, 65, 0.3, u, 50), PRICES).local_per_m for u in (0.1, 0.5, 1.0)]
    assert costs[0] > costs[1] > costs[2]
    # the electricity share per million does not depend on utilisation
    energies = {round(compute_cost(CostInputs(1000, 3, 65, 0.3, u, 50), PRICES).energy_per_m, 12)
                for u in (0.1, 0.5, 1.0)}
    assert len(energies) == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tok_s": 0}, "throughput must be more than 0"),
        ({"tok_s": -5}, "throughput must be more than 0"),
        ({"utilisation": 0}, "utilisation"),
        ({"utilisation": 1.5}, "utilisation"),
        ({"lifetime_years": 0}, "lifetime"),
        ({"hardware_price": -1}, "hardware price cannot be negative"),
        ({"watts": -3}, "power \\(watts\\) cannot be negative"),
        ({"kwh_price": -0.1}, "electricity price \\(per kWh\\) cannot be negative"),
        ({"input_per_output": -1}, "prompt tokens per output token cannot be negative"),
        ({"tok_s": math.nan}, "must be a finite number"),
        ({"hardware_price": math.inf}, "must be a finite number"),
    ],
)
def test_inputs_the_arithmetic_cannot_mean_are_refused(change: dict[str, float], message: str) -> None:
    inputs = CostInputs(**{**vars(CASE), **change})
    with pytest.raises(ValueError, match=message):
        compute_cost(inputs, PRICES)
