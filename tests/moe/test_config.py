import json

import pytest

from taskexpert.errors import InputError
from taskexpert.moe import CONFIG_FILE, ExpertSpec, MoeConfig


def test_round_trip_through_json(tmp_path):
    config = MoeConfig(
        top_k=1,
        load_balancing_coef=0.01,
        experts=[
            ExpertSpec(name="a", rank=8, scaling=2.0, rank_pattern={"m.q_proj": 4}),
            ExpertSpec(name="b", rank=16, scaling=1.0),
        ],
        modules=["m.q_proj"],
        target_modules=["q_proj"],
        base_fingerprint={"m.q_proj": [0.1, -0.2, 0.3, 0.0]},
    )
    config.save(tmp_path)
    assert MoeConfig.load(tmp_path) == config
    assert config.experts[0].rank_of("m.q_proj") == 4 and config.experts[1].rank_of("x") == 16


def test_defaults_follow_the_paper():
    config = MoeConfig()
    assert (config.top_k, config.load_balancing_coef, config.router_init) == (2, 0.0, "fresh")


def test_invalid_configs_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="top_k=3 exceeds the 2 experts"):
        MoeConfig(top_k=3, experts=[ExpertSpec(name=n, rank=1, scaling=1.0) for n in "ab"])
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"top_k": 2, "surprise": 1}))
    with pytest.raises(InputError, match="field 'surprise'"):
        MoeConfig.load(tmp_path)
    (tmp_path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(InputError, match="unreadable mixture config"):
        MoeConfig.load(tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"format_version": 99}))
    with pytest.raises(InputError, match="newer taskexpert"):
        MoeConfig.load(tmp_path)


def test_shared_expert_is_off_by_default_and_left_out_of_the_file(tmp_path):
    """shared_rank 0 writes the file versions before it wrote; alpha defaults to 2 r."""
    config = MoeConfig()
    assert (config.shared_rank, config.shared_alpha, config.shared_scaling) == (0, None, 0.0)
    config.save(tmp_path)
    data = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert "shared_rank" not in data and "shared_alpha" not in data
    assert MoeConfig.load(tmp_path) == config
    shared = MoeConfig(shared_rank=8)
    assert (
        shared.shared_scaling == 2.0
        and MoeConfig(shared_rank=8, shared_alpha=4).shared_scaling == 0.5
    )
    shared.save(tmp_path)
    assert MoeConfig.load(tmp_path) == shared
    with pytest.raises(ValueError, match="shared_rank"):
        MoeConfig(shared_rank=-1)
