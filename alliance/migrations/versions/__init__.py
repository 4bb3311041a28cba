"""One module per catalog schema revision."""
