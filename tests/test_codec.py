"""The one config codec: JSON as the checkpoints have always stored it, unknown keys refused."""

import pytest

from frozenlm.codec import from_json, to_json
from frozenlm.errors import ConfigError
from frozenlm.plugins.prompt_generator import EncoderKind, PromptGeneratorConfig
from frozenlm.plugins.soft_prompt import PromptInit, SoftPromptConfig
from frozenlm.supericl.run import SuperICLConfig


def test_soft_prompt_config_json_is_what_checkpoints_hold() -> None:
    config = SoftPromptConfig(length=7, init=PromptInit.VOCAB, shared=True)
    assert to_json(config) == {
        "length": 7,
        "init": "vocab",
        "vocab_size": 5000,
        "random_range": 0.5,
        "shared": True,
        "position": "input",
        "residual": 0,
    }
    assert from_json(SoftPromptConfig, to_json(config)) == config


def test_generator_config_round_trips_with_its_enum() -> None:
    config = PromptGeneratorConfig(length=4, encoder=EncoderKind.BACKBONE, width=32, heads=2)
    data = to_json(config)
    assert data["encoder"] == "backbone-embeddings"
    back = from_json(PromptGeneratorConfig, data)
    assert back == config and back.encoder is EncoderKind.BACKBONE


def test_missing_keys_take_their_defaults() -> None:
    """A checkpoint written before a field existed still loads."""
    assert from_json(SoftPromptConfig, {"length": 3, "init": "random"}) == SoftPromptConfig(
        length=3, init=PromptInit.RANDOM
    )


def test_unknown_keys_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"unknown key.*'lenght'"):
        from_json(SoftPromptConfig, {"lenght": 3}, "soft prompt config")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"length": "20"}, "length must be int"),
        ({"init": "words"}, "init must be one of 'class-labels', 'vocab', 'random'"),
        ({"shared": 1}, "shared must be bool"),
        ({"length": 0}, "prompt length must be at least 1"),
    ],
)
def test_wrong_values_are_refused_in_one_sentence(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_json(SoftPromptConfig, data)


def test_tuples_and_literals_decode() -> None:
    config = from_json(SuperICLConfig, {"variants": ["icl", "supericl"], "selection": "random"})
    assert config.variants == ("icl", "supericl") and config.selection == "random"
    assert to_json(config)["variants"] == ["icl", "supericl"]
    with pytest.raises(ConfigError, match="selection must be one of"):
        from_json(SuperICLConfig, {"selection": "nearest"})


def test_a_float_field_takes_an_integer() -> None:
    assert from_json(SoftPromptConfig, {"random_range": 1}).random_range == 1.0
