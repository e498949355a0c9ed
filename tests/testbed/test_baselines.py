import copy

import torch

from taskexpert.peft_glue import merged_lora
from taskexpert.testbed.baselines import format_table
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
