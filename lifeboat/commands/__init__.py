"""Click commands, one module per area; ``lifeboat/cli.py`` registers them on the group."""
