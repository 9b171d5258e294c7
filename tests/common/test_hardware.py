"""The CPU as the project sees it, and the choices made from it: training's arithmetic and its epoch plan."""

from __future__ import annotations

import pytest

from common.hardware import CpuInfo, onednn_enabled, parse_cpuinfo
from model_training.config import TrainConfig
from model_training.planning import RunPlan, SpeedProbe, choose_precision, plan_run

# Trimmed /proc/cpuinfo of the machines of this kind seen so far, and of an Arm server.
ZEN1 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 23
model\t\t: 1
model name\t: AMD EPYC 7551 32-Core Processor
flags\t\t: fpu sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni
"""
ZEN4 = """processor\t: 0
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16 avx512_vbmi2
"""
SAPPHIRE = """model name\t: Intel(R) Xeon(R) Processor
flags\t\t: avx avx2 fma avx512f avx512_vnni avx512_bf16 avx512_fp16 avx_vnni amx_bf16 amx_tile amx_int8
"""
GRAVITON3 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp sve bf16 i8mm
CPU part\t: 0xd40
"""


def test_cpuinfo_is_read_into_the_features_that_decide_something() -> None:
    zen1 = parse_cpuinfo(ZEN1, "x86_64", 2)
    assert zen1.model == "AMD EPYC 7551 32-Core Processor" and zen1.vector_isa == "avx2"
    assert zen1.relevant_flags() == ["avx2", "fma"] and zen1.native_bf16 == []
    assert "no AVX-512" in zen1.describe() and "AVX2 FMA" in zen1.describe()
    assert "family 23 model 1," in zen1.describe() and zen1.params()["cpu_model"].endswith("(family 23 model 1)")
    zen4 = parse_cpuinfo(ZEN4, "x86_64", 2)
    assert zen4.vector_isa == "avx512" and zen4.native_bf16 == ["avx512_bf16"]
    assert parse_cpuinfo(SAPPHIRE, "x86_64", 2).native_bf16 == ["avx512_bf16", "amx_bf16"]
    arm = parse_cpuinfo(GRAVITON3, "aarch64", 2)
    assert arm.native_bf16 == ["bf16"] and arm.model == "Arm CPU part 0xd40" and arm.vector_isa == "aarch64"
    assert parse_cpuinfo("", "x86_64", 1).relevant_flags() == []  # no /proc/cpuinfo: nothing assumed


def test_an_assumed_avx2_cpu_hides_what_such_a_cpu_lacks() -> None:
    cpu = parse_cpuinfo(SAPPHIRE, "x86_64", 2, assume="avx2")
    assert cpu.vector_isa == "avx2" and cpu.native_bf16 == [] and cpu.relevant_flags() == ["avx2", "fma"]
    assert cpu.assumed == "avx2" and "assumed avx2 (CPU_ASSUME)" in cpu.describe()
    assert cpu.params()["cpu_assumed"] == "avx2" and cpu.params()["cpu_flags"] == "avx2 fma"
    with pytest.raises(ValueError, match="CPU_ASSUME"):
        parse_cpuinfo(SAPPHIRE, "x86_64", 2, assume="sse2")


def test_onednn_follows_tensorflows_own_rule_unless_the_variable_says_otherwise() -> None:
    zen1, zen4 = parse_cpuinfo(ZEN1, "x86_64", 2), parse_cpuinfo(ZEN4, "x86_64", 2)
    assert not onednn_enabled(zen1, {}) and onednn_enabled(zen4, {})
    assert not onednn_enabled(zen4, {"TF_ENABLE_ONEDNN_OPTS": "0"}) and onednn_enabled(
        zen1, {"TF_ENABLE_ONEDNN_OPTS": "1"}
    )


@pytest.mark.parametrize(
    ("cpuinfo", "machine", "onednn", "expected", "why"),
    [
        (ZEN4, "x86_64", True, "mixed_bfloat16", "native bfloat16 (avx512_bf16)"),
        (SAPPHIRE, "x86_64", True, "mixed_bfloat16", "native bfloat16 (avx512_bf16, amx_bf16)"),
        (GRAVITON3, "aarch64", True, "mixed_bfloat16", "native bfloat16 (bf16)"),
        (ZEN1, "x86_64", False, "float32", "no native bfloat16 (avx2"),
        (ZEN4, "x86_64", False, "float32", "oneDNN is off"),
    ],
)
def test_auto_precision_is_bfloat16_only_where_the_cpu_computes_it(cpuinfo, machine, onednn, expected, why) -> None:
    choice = choose_precision("auto", parse_cpuinfo(cpuinfo, machine, 2), onednn)
    assert choice.precision == expected and why in choice.reason
    assert choice.params() == {"precision_requested": "auto", "precision_reason": choice.reason}


def test_a_precision_asked_for_by_name_is_kept() -> None:
    zen1 = parse_cpuinfo(ZEN1, "x86_64", 2)
    assert choose_precision("mixed_bfloat16", zen1, False).precision == "mixed_bfloat16"
    assert choose_precision("float32", parse_cpuinfo(ZEN4, "x86_64", 2), True).precision == "float32"
    with pytest.raises(ValueError, match="precision"):
        choose_precision("fp8", zen1, False)


def test_the_plan_fits_the_budget_at_the_probed_speed() -> None:
    # 215 steps of 0.7 s plus two 3.5 s passes over validation: 157.5 s an epoch; 45 s + 15 x 3.5 s kept after the
    # fit, and 15 s for the unfamiliarity head's fit (none without a head).
    probe = SpeedProbe(step_seconds=0.7, eval_seconds=3.5, seconds=20.0, steps=12)
    cfg = TrainConfig(epochs=44, time_budget=870.0)
    plan = plan_run(cfg, probe, 215, elapsed=30.0)
    assert plan.epoch_seconds == pytest.approx(157.5) and plan.after_fit_seconds == pytest.approx(112.5)
    assert plan.epochs == (870 - 30 - 112.5) // 157.5 == 4 and plan.last_epoch_steps is None
    no_head = TrainConfig(epochs=44, time_budget=870.0, unfamiliar_score="combined")
    assert plan_run(no_head, probe, 215, elapsed=30.0).after_fit_seconds == pytest.approx(97.5)
    assert plan.epoch_tail_seconds == pytest.approx(7.0) and plan.cap == 44
    # A fast machine is held at the cap, and the recipe is the default one.
    fast = plan_run(cfg, SpeedProbe(0.07, 0.3, 3.0, 12), 215, elapsed=10.0)
    assert fast.epochs == 44 and fast.recipe == {} and fast.config(cfg) == cfg
    # Not even one epoch fits: the one epoch is cut to the steps that do.
    tight = plan_run(TrainConfig(epochs=44, time_budget=250.0), probe, 215, elapsed=30.0)
    assert tight.epochs == 1 and tight.last_epoch_steps == int((250 - 30 - 112.5 - 7.0) // 0.7)
    # Pending work (photo renders) is kept for too.
    assert plan_run(cfg, probe, 215, elapsed=30.0, pending_seconds=200.0).epochs == 3


def test_a_plan_of_few_epochs_trains_the_short_recipe_and_says_what_to_expect() -> None:
    from model_training.planning import EXPECTED_ACCURACY, SHORT_RECIPES, expected_accuracy

    probe = SpeedProbe(step_seconds=0.7, eval_seconds=3.5, seconds=20.0, steps=12)
    few = plan_run(TrainConfig(epochs=44, time_budget=870.0), probe, 215, elapsed=30.0)
    most, overrides = SHORT_RECIPES[0]
    assert few.epochs <= most and few.recipe == dict(overrides)
    trained = few.config(TrainConfig())
    assert all(getattr(trained, k) == v for k, v in overrides.items())
    # Beyond the short recipe's reach the default recipe is kept.
    longer = plan_run(TrainConfig(epochs=44, time_budget=870.0 + 157.5 * (most + 1 - few.epochs)), probe, 215, 30.0)
    assert longer.epochs > most and longer.recipe == {}
    # The expectation grows with the epochs afforded and is logged with the plan.
    points = [expected_accuracy(e) for e in range(1, EXPECTED_ACCURACY[-1][0] + 1)]
    assert points == sorted(points) and few.params()["expected_test_accuracy"] == round(
        expected_accuracy(few.epochs), 4
    )
    assert "expect test accuracy" in few.describe()


def test_a_short_plan_applies_its_recipe_only_where_the_user_kept_the_default() -> None:
    plan = RunPlan(5, 44, 150.0, 200.0, recipe={"ema_decay": 0.99, "learning_rate": 0.006})
    cfg = plan.config(TrainConfig())
    assert cfg.epochs == 5 and cfg.ema_decay == 0.99 and cfg.learning_rate == 0.006
    mine = plan.config(TrainConfig(ema_decay=0.0))
    assert mine.ema_decay == 0.0 and mine.learning_rate == 0.006  # the user's own choice is kept
    assert plan.params()["short_recipe"] == "ema_decay=0.99,learning_rate=0.006"
    assert "5 of 44 epochs" in plan.describe()


def test_the_machine_is_described_with_its_model_and_features() -> None:
    from common.hardware import describe, detect_cpu

    cpu = detect_cpu()
    assert isinstance(cpu, CpuInfo) and cpu.cores >= 1 and describe().startswith(cpu.model)


def test_onednn_is_timed_both_ways_where_tensorflow_leaves_it_off_and_the_faster_kept(tmp_path) -> None:
    from model_training.planning import choose_onednn

    zen1, zen4 = parse_cpuinfo(ZEN1, "x86_64", 2), parse_cpuinfo(ZEN4, "x86_64", 2)
    cfg = TrainConfig(precision="float32")
    calls: list[bool] = []

    def measure(onednn: bool, arch: str, batch: int, environ) -> float:
        calls.append(onednn)
        return 0.4 if onednn else 0.6

    choice = choose_onednn(zen1, cfg, {}, tmp_path, measure)
    assert choice.enabled and calls == [True, False] and "timed now" in choice.reason
    assert choice.params()["onednn_probe"] == "off=0.6000,on=0.4000"
    again = choose_onednn(zen1, cfg, {}, tmp_path, measure)  # once per CPU model: the second run reads it
    assert again.enabled and calls == [True, False] and "cached" in again.reason
    slower = choose_onednn(zen1, cfg, {}, tmp_path / "other", lambda on, *a: 0.9 if on else 0.6)
    assert not slower.enabled
    # Nothing is timed where TensorFlow turns oneDNN on by itself, where the variable is set, or for bfloat16.
    assert choose_onednn(zen4, cfg, {}, tmp_path / "x", measure).enabled and calls == [True, False]
    assert not choose_onednn(zen1, cfg, {"TF_ENABLE_ONEDNN_OPTS": "0"}, tmp_path / "x", measure).enabled
    assert not choose_onednn(zen1, TrainConfig(precision="mixed_bfloat16"), {}, tmp_path / "x", measure).enabled
    failed = choose_onednn(zen1, cfg, {}, tmp_path / "y", lambda *a: 1 / 0)
    assert not failed.enabled and "probe failed" in failed.reason
