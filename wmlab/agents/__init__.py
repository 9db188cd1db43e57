"""One folder per algorithm: config.py + agent.py + README.md."""
