import pytest

from gateway.profiles import CALIBRATION, PROFILE_NAMES, Tier, get_profile


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_prefill_fit_reproduces_calibration_points(name):
    profile = get_profile(name)
    for new, cached, seconds in CALIBRATION[name]["prefill"]:
        tolerance = 0.05 if new + cached >= 16384 else 0.35  # launch overhead blurs the short ones
        assert profile.prefill.seconds(new, cached) == pytest.approx(seconds, rel=tolerance)


def test_cached_prefix_is_an_order_of_magnitude_cheaper_than_cold():
    prefill = get_profile("h100-llama3-8b").prefill
    cold = prefill.seconds(32768 + 1024)
    warm = prefill.seconds(1024, 32768)
    assert cold / warm > 10


def test_chunked_prefill_costs_what_one_pass_costs():
    prefill = get_profile("h100-llama3-8b").prefill
    chunks = sum(prefill.chunk_seconds(8192, 0, done) for done in range(0, 32768, 8192))
    assert prefill.fixed + chunks == pytest.approx(prefill.seconds(32768), rel=1e-9)


def test_dram_hit_is_far_cheaper_than_recompute_and_hbm_hit_is_free():
    profile = get_profile("h100-llama3-8b")
    recompute = profile.prefill.seconds(32768)
    dram = profile.fetch_seconds(32768, Tier.DRAM)
    assert 10 < recompute / dram < 25
    assert profile.fetch_seconds(32768, Tier.HBM) == 0
    assert profile.fetch_seconds(32768, Tier.DRAM) < profile.fetch_seconds(32768, Tier.STORAGE)


def test_decode_step_grows_with_batch_context():
    decode = get_profile("h100-llama3-8b").decode
    assert decode.step_seconds(16 * 4096) > decode.step_seconds(4096) > 0


def test_tensor_parallel_divides_times():
    profile = get_profile("h100-llama3-70b")
    assert profile.scaled(4).prefill.seconds(4096) == pytest.approx(profile.prefill.seconds(4096) / 4)


@pytest.mark.parametrize(
    ("medium", "tier"),
    [
        ("GPU", Tier.HBM),
        ("gpu", Tier.HBM),
        (None, Tier.HBM),
        ("CPU", Tier.DRAM),
        ("cpu", Tier.DRAM),
        ("STORAGE", Tier.STORAGE),
        ("Storage", Tier.STORAGE),
        ("DISK", Tier.STORAGE),
    ],
)
def test_tier_parses_vllm_medium_in_any_case(medium, tier):
    assert Tier.parse(medium) is tier


def test_unknown_profile_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("a100-gpt2")
