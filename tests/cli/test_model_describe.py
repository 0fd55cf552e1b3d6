"""`ocrq model describe`: the architecture listed by official checkpoint names."""

from __future__ import annotations

import json
import math
from pathlib import Path

from click.testing import CliRunner

from cli.main import cli
from models.deepseek_ocr.config import OcrConfig
from models.deepseek_ocr.weights import checkpoint_config_json


def test_describe_full_json_counts() -> None:
    result = CliRunner().invoke(cli, ["model", "describe", "--json"])
    assert result.exit_code == 0, result.output
    description = json.loads(result.output)
    assert description["parameters"] == 3_336_106_240
    assert len(description["tensors"]) == 2_710
    assert ["lm_head.weight", [129280, 1280], "bfloat16"] in description["tensors"]


def test_describe_tiny_table_ends_with_totals() -> None:
    result = CliRunner().invoke(cli, ["model", "describe", "--config", "tiny"])
    assert result.exit_code == 0, result.output
    last_line = result.output.strip().splitlines()[-1]
    assert last_line.startswith("parameters: ")
    assert "model.layers.1.mlp.experts.3.down_proj.weight" in result.output


def test_describe_reads_config_json(tmp_path: Path) -> None:
    raw = checkpoint_config_json(OcrConfig.tiny())
    (tmp_path / "config.json").write_text(json.dumps(raw))
    result = CliRunner().invoke(cli, ["model", "describe", "--config", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    description = json.loads(result.output)
    total = sum(math.prod(shape) for _, shape, _ in description["tensors"])
    assert description["parameters"] == total
    assert description["parameters"] < 20_000_000


def test_describe_unknown_config_is_rejected(tmp_path: Path) -> None:
    missing = tmp_path / "absent.json"
    result = CliRunner().invoke(cli, ["model", "describe", "--config", str(missing)])
    assert result.exit_code != 0
    assert "absent.json was not found" in result.output
