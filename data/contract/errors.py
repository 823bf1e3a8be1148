"""The contract's error type, in its own module so every part of the contract can raise it."""


class ContractError(ValueError):
    """A record does not follow the contract. The message names where (file:line, key)."""
