"""Money: a GPU's price per hour (flag or --gpu-file) and dollars per million tokens."""

import dataclasses
import json

import numpy as np
import pytest

from archscale.io.errors import UserError
from archscale.serving import GPUS, load_gpu
from archscale.serving.devices import FIELDS
from archscale.serving.price import resolve_price, usd_per_million_tokens
from archscale.serving.profiles import Profile

PHYSICAL = "bf16_tflops,hbm_tb_s,memory_gb,interconnect_gb_s"


# ---- dollars per million tokens, against a hand computation -------------------------------------------------------
def test_dollars_per_million_tokens_by_hand():
    # $2.50 an hour is 2.50/3600 dollars a second; at 1000 tokens/s a million tokens take 1000 s: 2.50/3.6 = $0.6944
    assert float(usd_per_million_tokens(1000.0, 2.50)) == pytest.approx(2.50 / 3.6, rel=1e-12)
    assert float(usd_per_million_tokens(1000.0, 2.50)) == pytest.approx(0.69444, abs=1e-5)
    # a tp-4 replica costs four GPU-hours an hour: at four times the tokens it is the same price per token
    assert float(usd_per_million_tokens(4000.0, 2.50, gpus=4)) == pytest.approx(2.50 / 3.6, rel=1e-12)
    assert float(usd_per_million_tokens(1000.0, 2.50, gpus=4)) == pytest.approx(4 * 2.50 / 3.6, rel=1e-12)


def test_dollars_per_million_tokens_is_vectorised_and_infinite_where_nothing_is_served():
    rates = np.array([1000.0, 2000.0, 0.0, -5.0, np.nan])
    cost = usd_per_million_tokens(rates, 3.6)
    assert cost.shape == rates.shape
    assert cost[:2] == pytest.approx([1.0, 0.5])  # $3.60/h = $0.001/s; 1e6 tokens at 1000/s = 1000 s
    assert np.isinf(cost[2]) and np.isinf(cost[3])  # a shape that does not fit or meets no limit
    assert np.isnan(cost[4])  # an unknown throughput stays unknown


@pytest.mark.parametrize("price, gpus, message", [
    (-1.0, 1, "the price must be a positive price in US dollars per GPU-hour, got -1"),
    (2.0, 0, "GPU count must be a positive integer, got 0"),
])
def test_dollars_per_million_tokens_refuses_nonsense(price, gpus, message):
    with pytest.raises(UserError, match=message):
        usd_per_million_tokens(1000.0, price, gpus)


# ---- which price: the flag, else the device's, else none ------------------------------------------------------------
def test_the_flag_wins_over_the_file_and_the_file_over_nothing():
    priced = dataclasses.replace(GPUS["h100-sxm"], usd_per_hour=3.0)
    assert resolve_price(2.5, priced) == 2.5
    assert resolve_price(None, priced) == 3.0
    assert resolve_price(None, GPUS["h100-sxm"]) is None


def test_the_built_in_table_has_no_prices():
    assert all(gpu.usd_per_hour is None for gpu in GPUS.values())


@pytest.mark.parametrize("value, shown", [(-1.0, "-1"), (0.0, "0"), (float("nan"), "nan"), (float("inf"), "inf")])
def test_a_price_that_is_not_positive_is_one_line(value, shown):
    with pytest.raises(UserError) as error:
        resolve_price(value, GPUS["h100-sxm"])
    assert str(error.value) == f"--gpu-price must be a positive price in US dollars per GPU-hour, got {shown}"


def test_the_flag_name_is_the_callers():
    with pytest.raises(UserError, match="^--price must be a positive price"):
        resolve_price(-2.0, GPUS["h100-sxm"], flag="--price")


# ---- a --gpu-file with prices ---------------------------------------------------------------------------------------
def test_a_gpu_file_with_a_price_column_is_read_right(tmp_path):
    path = tmp_path / "gpus.csv"
    path.write_text(f"name,{PHYSICAL},usd_per_hour\n"
                    "b200,2250,8.0,180,1800,5.75\n"
                    "h100-sxm,989,3.35,80,900,\n")  # an empty cell: no price for that GPU
    b200 = load_gpu("b200", path)
    assert b200.usd_per_hour == 5.75 and b200.hbm_tb_s == 8.0
    assert load_gpu("h100-sxm", path).usd_per_hour is None
    assert resolve_price(None, b200) == 5.75


def test_a_json_gpu_file_with_a_price(tmp_path):
    path = tmp_path / "gpus.json"
    path.write_text(json.dumps({"b200": {"bf16_tflops": 2250, "hbm_tb_s": 8.0, "memory_gb": 180,
                                         "interconnect_gb_s": 1800, "usd_per_hour": 6}}))
    assert load_gpu("b200", path).usd_per_hour == 6.0


def test_a_price_list_prices_the_built_in_gpus_without_restating_them(tmp_path):
    path = tmp_path / "prices.csv"
    path.write_text("name,usd_per_hour\nH100-SXM,2.49\n")
    gpu = load_gpu("h100-sxm", path)
    assert gpu.usd_per_hour == 2.49
    assert all(getattr(gpu, f) == getattr(GPUS["h100-sxm"], f) for f in FIELDS)


@pytest.mark.parametrize("text, message", [
    (f"name,{PHYSICAL},usd_per_hour\nb200,2250,8.0,180,1800,-1\n",
     "gpus.csv: GPU 'b200': usd_per_hour must be a positive price in US dollars per GPU-hour, got -1"),
    (f"name,{PHYSICAL},usd_per_hour\nb200,2250,8.0,180,1800,cheap\n",
     "gpus.csv: GPU 'b200': usd_per_hour must be a positive price in US dollars per GPU-hour, got 'cheap'"),
    ("name,usd_per_hour\nh100-sxm,0\n", "gpus.csv: GPU 'h100-sxm': usd_per_hour must be a positive price"),
    ("name,usd_per_hour\nb200,5\n", "gpus.csv: GPU entry 1 is missing bf16_tflops"),  # not built in: say what it is
])
def test_a_bad_price_in_a_gpu_file_is_one_line_naming_file_gpu_and_field(tmp_path, text, message):
    path = tmp_path / "gpus.csv"
    path.write_text(text)
    with pytest.raises(UserError) as error:
        load_gpu("b200", path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_price_changes_neither_the_device_nor_a_profile_of_it():
    """Profiles fingerprint their device's physical fields: a price must not make a profile another device's."""
    assert FIELDS == ("name", "bf16_tflops", "hbm_tb_s", "memory_gb", "interconnect_gb_s")
    plain = GPUS["h200"]
    priced = dataclasses.replace(plain, usd_per_hour=4.0)
    assert priced == plain
    profile = Profile.uncalibrated(plain)
    priced_profile = dataclasses.replace(profile, device=priced)
    assert priced_profile.fingerprint() == profile.fingerprint()
    assert "usd_per_hour" not in priced_profile.to_json()["device"]
