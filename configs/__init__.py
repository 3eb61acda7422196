"""The run configs, installed with the package as `cows_jax.configs`: `--config voc12:runlocal`
names one of these modules; `--config configs/voc12.py:runlocal` reads the same file from a
clone. Each module's `get_config(arg)` returns an ml_collections.ConfigDict."""
