"""Messages about a setting name the flag a user can actually pass."""

from __future__ import annotations

import pytest

from recursive_training.config import TrainingConfig
from recursive_training.config.training_config import cli_flag
from recursive_training.exceptions import ConfigError
from recursive_training.run_training import build_parser


def test_every_setting_is_named_by_a_flag_the_cli_accepts() -> None:
    options = {option for action in build_parser()._actions for option in action.option_strings}
    assert {n: cli_flag(n) for n in TrainingConfig.model_fields if cli_flag(n) not in options} == {}


def test_a_bad_report_folder_names_the_report_flag() -> None:
    with pytest.raises(ConfigError, match=r"report_dir \(--report\): Input should be a valid"):
        TrainingConfig.build(report_dir=5)
