import copy

import torch

from taskexpert.peft_glue import merged_lora
from taskexpert.testbed.baselines import calibration_misses, format_table
from taskexpert.testbed.layout import BANK_DIR


def test_a_merged_adapter_computes_what_the_peft_model_does(micro_testbed):
    from peft import PeftModel

    base, _ = micro_testbed.load_base()
    adapter = micro_testbed.root / BANK_DIR / "expert_add"
    merged = merged_lora(base, adapter)
    assert not hasattr(merged, "peft_config")  # a plain model: decoding skips the LoRA matmuls
    unmerged = PeftModel.from_pretrained(copy.deepcopy(base), str(adapter)).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, unmerged(ids).logits, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(merged(ids).logits, base(ids).logits)  # the adapter is in


def test_the_table_lists_every_method_and_target(micro_testbed):
    text = format_table(micro_testbed.truth)
    for target in micro_testbed.truth["baselines"]:
        assert target[:16] in text
    assert "kshot_lora" in text and "calibration" in text


def test_a_build_that_misses_its_calibration_says_which_limit():
    truth = {
        "calibration": {
            "shift": {"base": 0.0, "expert": 0.64},
            "add": {"base": 0.31, "expert": 1.0},
            "count": {"base": 0.3, "expert": 0.8},  # on the limits: met
        },
        "baselines": {
            "reverse_and_add": {"base": 0.0, "ceiling_lora": 0.64},
            "initials_and_max": {"base": 0.0, "ceiling_lora": 0.99},
            "count_chat": {"base": 0.05},  # one-skill targets have no ceiling
        },
    }
    assert calibration_misses(truth) == [
        "expert_shift 0.64 < 0.8", "base on add 0.31 > 0.3", "reverse_and_add ceiling 0.64 < 0.8"
    ]  # fmt: skip
    assert "warning: calibration limits missed" in format_table(truth)
    truth["calibration"] = {"count": {"base": 0.3, "expert": 0.8}}
    truth["baselines"]["reverse_and_add"]["ceiling_lora"] = 0.8
    assert calibration_misses(truth) == [] and "calibration limits met" in format_table(truth)
