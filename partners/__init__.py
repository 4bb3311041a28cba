"""Partners: the data contract, validation of deliveries, accounts and tokens, the delivery service and its client."""
