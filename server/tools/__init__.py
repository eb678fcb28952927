"""What is behind the CLI's offline commands: heddle profile, simulate and config."""
