"""The user's commands: `python sweeps/<name>.py`. The driver behind them is `driver/`."""
