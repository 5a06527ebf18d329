"""``channelnorm compare``: the experiment of docs/design.md §7 (config, data, models, train, sweep, results, report, cli)."""
from .config import ConfigError, ExperimentConfig, full_config, quick_config

__all__ = ["ConfigError", "ExperimentConfig", "full_config", "quick_config"]
