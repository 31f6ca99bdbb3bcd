"""The contract's errors: ``ContractError`` means the remote data is bad, never a local bug."""


class ContractError(Exception):
    """Base class: data received from the other side is not acceptable."""


class MalformedDocument(ContractError, ValueError):
    """Not valid JSON, base64 or fields for the expected kind of document."""


class OversizeError(ContractError):
    """Larger than the byte cap; refused before any parsing."""


class SignatureError(ContractError):
    """Unknown key, bad signature, or fewer valid signatures than the threshold."""


class RollbackError(ContractError):
    """Version lower than or equal to the trusted one."""


class RotationError(ContractError):
    """A new root that does not directly follow the trusted root (e.g. skips a version)."""


class ExpiredError(ContractError):
    """The document (or the trusted root it is checked against) has expired."""


class NotYetValidError(ContractError):
    """Issued further in the future than the allowed clock skew."""


class WrongSatelliteError(ContractError):
    """The document is addressed to another satellite (mix-and-match)."""
