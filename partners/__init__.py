"""Partners: the data contract, partner accounts, the delivery service, consent and revocation."""
