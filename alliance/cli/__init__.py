"""The `alliance` command: one module per command group, each importing its package only when it runs."""
